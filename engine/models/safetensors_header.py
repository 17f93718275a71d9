"""Read a .safetensors header (names, dtypes, shapes, metadata) without touching the weights."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from engine.models.errors import ModelFileError

_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors dtype name: BF16, F16, F32, F8_E4M3, ...
    shape: tuple[int, ...]
    offsets: tuple[int, int] = (0, 0)  # byte range inside the data section


@dataclass(frozen=True)
class Header:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_bytes: int  # size of the data section the header describes
    data_start: int = 0  # file offset of the data section

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: info.shape for name, info in self.tensors.items()}


def read_header(path: str | Path, expected: str = "a .safetensors model file") -> Header:
    """Parse the header; a missing, truncated or non-safetensors file is a ModelFileError."""
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder; choose the .safetensors file itself ({expected})")
    if not path.is_file():
        raise ModelFileError(f"{path}: file not found (expected {expected})")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ModelFileError(f"{path}: only {size} bytes, not a safetensors file (expected {expected})")
        (length,) = struct.unpack("<Q", prefix)
        if length <= 1 or length > _MAX_HEADER:
            raise ModelFileError(_not_safetensors(path, expected))
        raw = handle.read(length)
    if not raw.startswith(b"{"):
        raise ModelFileError(_not_safetensors(path, expected))
    if length + 8 > size:
        raise ModelFileError(f"{path}: truncated inside its header ({size} bytes); download it again "
                             f"(expected {expected})")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelFileError(_not_safetensors(path, expected)) from None
    if not isinstance(data, dict):
        raise ModelFileError(_not_safetensors(path, expected))
    metadata = data.pop("__metadata__", None) or {}
    tensors, end = {}, 0
    try:
        for name, entry in data.items():
            tensors[name] = TensorInfo(str(entry["dtype"]), tuple(int(side) for side in entry["shape"]),
                                       tuple(int(offset) for offset in entry["data_offsets"]))
            end = max(end, tensors[name].offsets[1])
    except (KeyError, TypeError, ValueError, IndexError):
        raise ModelFileError(f"{path}: damaged safetensors header (entry {name!r}); expected {expected}") from None
    if 8 + length + end > size:
        raise ModelFileError(
            f"{path}: truncated: the header describes {8 + length + end} bytes but the file has "
            f"{size} (download it again; expected {expected})"
        )
    return Header(tensors, metadata, end, 8 + length)


def _not_safetensors(path: Path, expected: str) -> str:
    hint = " (a .ckpt/.pt pickle? convert it to .safetensors)" if path.suffix in (".ckpt", ".pt", ".pth", ".bin") else ""
    return f"{path}: not a safetensors file{hint}; expected {expected}"


_TORCH_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64",
                 "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32",
                 "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def torch_dtype(info: TensorInfo):
    import torch

    return getattr(torch, _TORCH_DTYPES[info.dtype])


def read_tensor_into(handle, path: Path, header: Header, name: str, out, slab_bytes: int = 16 << 20) -> None:
    """Read tensor `name` from the open file into the preallocated `out` (same shape, any
    dtype), a slab of rows at a time, with plain reads: neither a memory map's pages nor a
    full-size copy in the file's dtype stay in memory, so loading costs only the tensors kept.
    From float8, values go through float32, which holds every float8 value exactly."""
    import torch
    from torch._subclasses.fake_tensor import is_fake

    if is_fake(out):  # a full-size memory plan (benchmarks/memory_plan.py): shapes only, nothing to read
        return
    info = header.tensors[name]
    source_dtype = torch_dtype(info)
    start, end = info.offsets
    rows = info.shape[0] if info.shape else 1
    row_bytes = (end - start) // max(rows, 1)
    target = out.view(rows, -1)
    step = max(1, slab_bytes // max(row_bytes, 1))
    buffer = torch.empty(min(rows, step) * row_bytes, dtype=torch.uint8)
    handle.seek(header.data_start + start)
    for first in range(0, rows, step):
        count = min(step, rows - first)
        view = memoryview(buffer.numpy())[:count * row_bytes]
        done = 0
        while done < len(view):
            got = handle.readinto(view[done:])
            if not got:
                raise ModelFileError(f"{path}: truncated while reading {name}")
            done += got
        slab = buffer[:count * row_bytes].view(source_dtype).view(count, -1)
        if slab.dtype != out.dtype and 1 in (slab.dtype.itemsize, out.dtype.itemsize):
            slab = slab.float()
        target[first:first + count] = slab.to(out.dtype)
