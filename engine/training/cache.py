"""Latent and text-encoder output caches, in memory or on disk.

An entry's key hashes everything that changes its value (image bytes, bucket, caption text,
model file identity, settings), so an edited caption, a changed image or another model file
simply misses and only that entry is recomputed. Disk entries are safetensors files written
atomically, one per entry.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from engine.fsutil import atomic_path

CACHE_FOLDER = ".fluxlora-cache"
_SAMPLE = 1024 * 1024
# Raise when the way entries are computed changes (pixel preparation, normalisation, tensor
# names), so caches written by an older version miss instead of feeding stale values.
CACHE_FORMAT = 1


def file_identity(path: str | Path) -> str:
    """A cheap fingerprint of a model file: size, header and a few 1 MiB samples."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        for position in [0] + [size * k // 8 for k in range(1, 8)] + [max(0, size - _SAMPLE)]:
            handle.seek(position)
            digest.update(handle.read(_SAMPLE))
    return digest.hexdigest()[:32]


def bytes_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def entry_key(**parts) -> str:
    parts["format"] = CACHE_FORMAT
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:40]


class EntryCache:
    """Tensors by key; `folder=None` keeps them in memory only."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.memory: dict[str, dict[str, torch.Tensor]] = {}

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        if key in self.memory:
            return self.memory[key]
        if self.folder is not None:
            path = self.folder / f"{key}.safetensors"
            if path.is_file():
                from safetensors.torch import load_file

                try:
                    tensors = load_file(str(path))
                except Exception:  # a damaged entry is recomputed, never trusted
                    return None
                self.memory[key] = tensors
                return tensors
        return None

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
        self.memory[key] = tensors
        if self.folder is not None:
            from safetensors.torch import save_file

            with atomic_path(self.folder / f"{key}.safetensors") as tmp:
                save_file(tensors, str(tmp))
