"""Text-encoder outputs for the captions: CLIP-L pooled and the T5 sequence, cached or live."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from engine.events import CACHING_TEXT, LOADING
from engine.training.cache import CACHE_FOLDER, EntryCache, entry_key, file_identity
from engine.training.data import Sample
from engine.training.placement import EncoderPlacement, encoder_dtype, free_memory
from engine.training.reporting import RunReporter


class TextEncoding:
    def __init__(self, values: dict, placement: EncoderPlacement, reporter: RunReporter, stop: threading.Event):
        self.clip_path, self.t5_path = values["clip_l"], values["t5xxl"]
        self.clip_tokenizer_path = values["clip_l_tokenizer_path"]
        self.t5_tokenizer_path = values["t5xxl_tokenizer_path"]
        self.t5_length = values["t5xxl_max_token_length"]
        self.cached = values["flux1_cache_text_encoder_outputs"]
        self.cache_folder = (Path(values["train_data_dir"]) / CACHE_FOLDER / "text"
                             if values["flux1_cache_text_encoder_outputs_to_disk"] else None)
        self.keep_encoders = values["highvram"]
        self.placement = placement
        self.device = placement.device
        self.reporter = reporter
        self.stop = stop

    def prepare(self, samples: list[Sample]) -> None:
        """Load tokenizers and encoders; with caching, encode every caption once and free the encoders."""
        from engine.models.text_encoders import load_clip_l, load_t5, load_tokenizers

        self.reporter.progress(LOADING, 0, 0)
        self.reporter.log("loading tokenizers and text encoders")
        self.clip_tokenizer, self.t5_tokenizer = load_tokenizers(self.clip_tokenizer_path, self.t5_tokenizer_path)
        dtype = encoder_dtype(self.device)
        self.clip = load_clip_l(self.clip_path, dtype).to(self.device)
        self.t5 = load_t5(self.t5_path, dtype, device=self.device)  # never all of T5-XXL in RAM
        identity = dict(clip=file_identity(self.clip_path), t5=file_identity(self.t5_path),
                        clip_tok=self.clip_tokenizer_path or "standard", t5_tok=self.t5_tokenizer_path or "standard",
                        t5_len=self.t5_length)
        self._key = lambda caption: entry_key(kind="text", caption=caption, **identity)  # noqa: E731
        self.cache = EntryCache(self.cache_folder)
        if not self.cached:
            self.clip.to(self.placement.parking)
            self.t5.to(self.placement.parking)
            return
        self._fill_cache(sorted({sample.caption for sample in samples}))

    def _fill_cache(self, captions: list[str]) -> None:
        computed = 0
        for index, caption in enumerate(captions):
            if self.stop.is_set():
                return
            if self.cache.get(self._key(caption)) is None:
                self.cache.put(self._key(caption), self.encode([caption], squeeze=True))
                computed += 1
            self.reporter.progress(CACHING_TEXT, index + 1, len(captions))
        self.reporter.log(f"text cache: {computed} computed, {len(captions) - computed} reused")
        if not self.keep_encoders:
            del self.clip, self.t5
            self.clip = self.t5 = None
            free_memory()

    @torch.no_grad()
    def encode(self, captions: list[str], squeeze: bool = False) -> dict[str, torch.Tensor]:
        clip_ids = self.clip_tokenizer(captions, padding="max_length", max_length=77, truncation=True,
                                       return_tensors="pt").input_ids.to(self.device)
        t5 = self.t5_tokenizer(captions, padding="max_length", max_length=self.t5_length, truncation=True,
                               return_tensors="pt")
        pooled = self.clip(clip_ids).pooler_output.float()
        sequence = self.t5(t5.input_ids.to(self.device)).last_hidden_state.float()
        out = {"pooled": pooled, "t5": sequence, "mask": t5.attention_mask.to(self.device)}
        return {k: v[0] for k, v in out.items()} if squeeze else out

    def batch(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        if not self.cached:
            with self.placement.visiting(self.clip), self.placement.visiting(self.t5):
                return self.encode([s.caption for s in samples])
        entries = [self.cache.get(self._key(s.caption)) for s in samples]
        return {k: torch.stack([e[k] for e in entries]).to(self.device) for k in ("pooled", "t5", "mask")}
