"""What Windows accepts as a file or folder name, and how long a path may be there.

Our users are on Windows, so names are checked by Windows' rules on every platform: a preset
that saves here must also train there.
"""

from __future__ import annotations

import os
import sys

BAD_NAME_CHARS = frozenset('<>:"/\\|?*')
# Device names: refused as a name and, before Windows 11, with any extension too (CON.txt).
RESERVED_NAMES = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"{kind}{n}" for kind in ("COM", "LPT") for n in [*"123456789", "¹", "²", "³"]]
)
MAX_PATH = 260  # Windows' classic limit, the terminating NUL included


def name_problem(name: str) -> str | None:
    """Why Windows would refuse `name` as a file or folder name (None if it accepts it).

    The text completes "… is not allowed: " / "… cannot be used: " style messages.
    """
    if not name.strip():
        return "it is empty"
    bad = sorted(BAD_NAME_CHARS & set(name))
    if bad:
        return f"it contains {' '.join(bad)}, which file names cannot hold"
    if any(ord(char) < 32 for char in name):
        return "it contains a control character"
    if name != name.rstrip(" ."):
        return "it ends with a dot or a space, which Windows removes"
    if name != name.lstrip(" "):
        return "it starts with a space"
    if name.split(".")[0].rstrip(" ").upper() in RESERVED_NAMES:
        return f"{name.split('.')[0].upper()} is a device name on Windows"
    return None


def long_paths_enabled() -> bool:
    """Whether this Windows has long paths switched on (always True elsewhere)."""
    if sys.platform != "win32":
        return True
    import winreg

    try:
        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, r"SYSTEM\CurrentControlSet\Control\FileSystem") as key:
            return bool(winreg.QueryValueEx(key, "LongPathsEnabled")[0])
    except OSError:
        return False


# How many characters our files add below a folder, at most: temporary names included.
TEMP_TAIL = len(".fluxlora-4294967295-xxxxxxxx.tmp")
OUTPUT_TAIL = len("\\-step00000000-state") + TEMP_TAIL + len("\\random_states_0.pkl")  # plus output_name
CACHE_TAIL = len("\\.fluxlora-cache\\latents\\") + 40 + len(".safetensors") + TEMP_TAIL


def path_length_problem(key: str, folder: str, tail: int, enabled: bool | None = None) -> str | None:
    """A message naming `key` when files `tail` characters below `folder` would pass Windows'
    260-character limit while long paths are off."""
    if enabled is None:
        enabled = long_paths_enabled()
    longest = len(os.path.abspath(folder)) + tail
    if enabled or longest < MAX_PATH:
        return None
    return (f"{key}: {folder} is too long: files FluxLoRA writes below it would have paths of up to {longest} "
            f"characters and Windows allows {MAX_PATH - 1} unless long paths are switched on. Choose a shorter "
            "folder, or switch long paths on (Group Policy editor: 'Enable Win32 long paths', or the registry "
            "value LongPathsEnabled=1 under HKLM\\SYSTEM\\CurrentControlSet\\Control\\FileSystem) and restart")
