"""Messages as the page shows them: by the field label a person sees, the key after it.

Engine messages start with the option key they are about ("network_dim: ..."), which is what
the CLI and JSON users type; the page turns that into "Network rank (dim) (network_dim): ...".
"""

from __future__ import annotations

import re

from engine.schema import OPTIONS

_LEADING_KEY = re.compile(r"^([A-Za-z0-9_]+): ")


def labelled(message: str) -> str:
    match = _LEADING_KEY.match(message)
    if not match or match.group(1) not in OPTIONS:
        return message
    key = match.group(1)
    return f"{OPTIONS[key].label} ({key}): {message[match.end():]}"
