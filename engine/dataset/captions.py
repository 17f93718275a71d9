"""Decoding caption files as people's editors write them: UTF-8 (with or without BOM), UTF-16
with a BOM (Windows Notepad's "Unicode"), and legacy cp1252 (Western Windows), never silently.

`decode_caption` returns the text and, when the bytes were not plain UTF-8, a warning that names
the file, so no caption is trained with NUL bytes or replacement characters unannounced.
"""

from __future__ import annotations

import codecs
from pathlib import Path

_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def decode_caption(data: bytes, path: str | Path) -> tuple[str, str | None]:
    """(text, warning or None) for the bytes of caption file `path`."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            text = data.decode(encoding, errors="replace")
            return text, _damage(text, path, f"read as {'UTF-16' if encoding == 'utf-16' else 'UTF-8'}")
    if b"\x00" in data:
        guess = _utf16_without_bom(data)
        if guess is not None:
            return guess, (f"{path}: UTF-16 without a byte order mark, read as UTF-16; save it as UTF-8 "
                           "to be sure it reads the same everywhere")
        text = data.replace(b"\x00", b"").decode("utf-8", errors="replace")
        return text, f"{path}: contains NUL bytes, which were removed; check the caption and save it as UTF-8"
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        pass
    text = data.decode("cp1252", errors="replace")
    warning = f"{path}: not UTF-8, read as Windows-1252 (cp1252): {_preview(text)!r}; save it as UTF-8 if that is wrong"
    return text, _damage(text, path, "read as Windows-1252") or warning


def _utf16_without_bom(data: bytes) -> str | None:
    """Text when the NULs sit where UTF-16 puts them for mostly-ASCII text (every other byte)."""
    if len(data) % 2:
        return None
    for encoding, zeros in (("utf-16-le", data[1::2]), ("utf-16-be", data[0::2])):
        if zeros.count(0) >= len(zeros) * 0.6:
            try:
                return data.decode(encoding)
            except UnicodeDecodeError:
                return None
    return None


def _damage(text: str, path, how: str) -> str | None:
    if "\ufffd" in text:
        return f"{path}: {how}, but some bytes are not valid text (shown as \ufffd): {_preview(text)!r}; fix the caption"
    if "\x00" in text:
        return f"{path}: {how}, but it contains NUL characters; fix the caption"
    return None


def _preview(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 60 else line[:57] + "..."


def read_caption_file(path: str | Path) -> tuple[str, str | None]:
    path = Path(path)
    return decode_caption(path.read_bytes(), path)
