"""VAE latents of the training images at their buckets, cached or encoded per batch."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from engine.dataset.images import open_image_rgb
from engine.events import CACHING_LATENTS
from engine.training.cache import CACHE_FOLDER, EntryCache, bytes_digest, entry_key, file_identity
from engine.training.data import Sample, fit_to_bucket
from engine.training.placement import EncoderPlacement, encoder_dtype, free_memory
from engine.training.reporting import RunReporter


class LatentEncoding:
    def __init__(self, values: dict, placement: EncoderPlacement, reporter: RunReporter, stop: threading.Event,
                 keep_for_decoding: bool = False):
        self.vae_path = values["ae"]
        self.cached = values["cache_latents"]
        self.cache_folder = (Path(values["train_data_dir"]) / CACHE_FOLDER / "latents"
                             if values["cache_latents_to_disk"] else None)
        self.keep_vae = values["highvram"]
        self.keep_for_decoding = keep_for_decoding  # sample images: parked in RAM after caching, not freed
        self.placement = placement
        self.device = placement.device
        self.reporter = reporter
        self.stop = stop
        self._digests: dict[Path, str] = {}

    def prepare(self, samples: list[Sample]) -> None:
        """Load the VAE; with caching, encode every image once and free the VAE."""
        from engine.models.autoencoder import load_autoencoder

        self.reporter.log("loading the autoencoder")
        self.vae = load_autoencoder(self.vae_path, encoder_dtype(self.device)).to(self.device)
        self._vae_id = file_identity(self.vae_path)
        self.cache = EntryCache(self.cache_folder)
        if not self.cached:
            self.vae.to(self.placement.parking)
            return
        computed = 0
        for index, sample in enumerate(samples):
            if self.stop.is_set():
                return
            if self.cache.get(self._key(sample)) is None:
                self.cache.put(self._key(sample), {"latent": self.encode([sample])[0]})
                computed += 1
            self.reporter.progress(CACHING_LATENTS, index + 1, len(samples))
        self.reporter.log(f"latent cache: {computed} computed, {len(samples) - computed} reused")
        if self.keep_for_decoding and not self.keep_vae:
            self.vae.to(self.placement.parking)
        elif not self.keep_vae:
            del self.vae
            self.vae = None
            free_memory()

    def _key(self, sample: Sample) -> str:
        if sample.image_path not in self._digests:
            self._digests[sample.image_path] = bytes_digest(sample.image_path)
        return entry_key(kind="latent", image=self._digests[sample.image_path], bucket=sample.bucket,
                         resized=sample.resized, vae=self._vae_id)

    @torch.no_grad()
    def encode(self, samples: list[Sample]) -> torch.Tensor:
        import numpy as np

        pixels = []
        for sample in samples:
            with open_image_rgb(sample.image_path) as image:
                fitted = fit_to_bucket(image, sample.bucket, sample.resized)
            array = torch.from_numpy(np.asarray(fitted, dtype=np.float32)).permute(2, 0, 1)
            pixels.append(array / 127.5 - 1.0)
        batch = torch.stack(pixels).to(self.device, self.vae.dtype)
        latents = self.vae.encode(batch).latent_dist.mode().float()
        return (latents - self.vae.config.shift_factor) * self.vae.config.scaling_factor

    def batch(self, samples: list[Sample]) -> torch.Tensor:
        if not self.cached:
            with self.placement.visiting(self.vae):
                return self.encode(samples)
        return torch.stack([self.cache.get(self._key(s))["latent"] for s in samples]).to(self.device)
