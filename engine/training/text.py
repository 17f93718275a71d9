"""Text-encoder outputs for the captions: CLIP-L pooled and the T5 sequence, cached or live.

With a text encoder learning rate above 0, CLIP-L gets a LoRA and runs live for every batch
(kept on the device, it is small), while T5's outputs are still cached, as sd-scripts does.
"""

from __future__ import annotations

import contextlib
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
        self.t5_mask = values["apply_t5_attn_mask"]  # sd-scripts masks T5's own attention too
        self.cached = values["flux1_cache_text_encoder_outputs"]
        self.train_clip = values["text_encoder_lr"] > 0
        self.lora_settings = (values["network_dim"], values["network_alpha"], values["seed"])
        self.clip_lora: torch.nn.Module | None = None  # CLIP-L with its LoRA, when it trains
        self.cache_folder = (Path(values["train_data_dir"]) / CACHE_FOLDER / "text"
                             if values["flux1_cache_text_encoder_outputs_to_disk"] else None)
        self.keep_encoders = values["highvram"]
        self.placement = placement
        self.device = placement.device
        self.reporter = reporter
        self.stop = stop

    def prepare(self, samples: list[Sample], also=None) -> None:
        """Load tokenizers and encoders; with caching, encode every caption once and free the encoders.
        `also(encode)` runs first, while the encoders are surely loaded (sample prompts)."""
        from engine.models.text_encoders import load_clip_l, load_t5, load_tokenizers

        self.reporter.progress(LOADING, 0, 0)
        self.reporter.log("loading tokenizers and text encoders")
        self.clip_tokenizer, self.t5_tokenizer = load_tokenizers(self.clip_tokenizer_path, self.t5_tokenizer_path)
        dtype = encoder_dtype(self.device)
        self.clip = load_clip_l(self.clip_path, dtype).to(self.device)
        self.t5 = load_t5(self.t5_path, dtype, device=self.device)  # never all of T5-XXL in RAM
        if self.train_clip:
            self._add_clip_lora()
        if also is not None:
            also(self.encode)
        identity = dict(t5=file_identity(self.t5_path), t5_tok=self.t5_tokenizer_path or "standard",
                        t5_len=self.t5_length, t5_mask=self.t5_mask)
        if not self.train_clip:  # a cached entry holds what is cached: T5 only while CLIP-L trains
            identity.update(clip=file_identity(self.clip_path), clip_tok=self.clip_tokenizer_path or "standard")
        self._key = lambda caption: entry_key(kind="text", caption=caption, **identity)  # noqa: E731
        self.cache = EntryCache(self.cache_folder)
        if not self.cached:
            if not self.train_clip:
                self.clip.to(self.placement.parking)
            self.t5.to(self.placement.parking)
            return
        self._fill_cache(sorted({sample.caption for sample in samples}))

    def _add_clip_lora(self) -> None:
        from engine.models.te_lora import add_clip_lora

        rank, alpha, seed = self.lora_settings
        torch.manual_seed(seed + 1)  # the CLIP-L LoRA's initial weights
        self.clip_params = add_clip_lora(self.clip, rank, alpha)
        self.clip.train()
        self.clip_lora = self.clip
        self.reporter.log(f"training a CLIP-L LoRA too ({len(self.clip_params) // 2} layers); T5 stays frozen")

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
            del self.t5
            self.t5 = None
            if not self.train_clip:
                del self.clip
                self.clip = None
            free_memory()

    def pooled(self, captions: list[str]) -> torch.Tensor:
        """CLIP-L's pooled output; with gradients for its LoRA when it trains."""
        clip_ids = self.clip_tokenizer(captions, padding="max_length", max_length=77, truncation=True,
                                       return_tensors="pt").input_ids.to(self.device)
        with torch.enable_grad() if self.train_clip else torch.no_grad():
            return self.clip(clip_ids).pooler_output.float()

    @torch.no_grad()
    def encode(self, captions: list[str], squeeze: bool = False) -> dict[str, torch.Tensor]:
        t5 = self.t5_tokenizer(captions, padding="max_length", max_length=self.t5_length, truncation=True,
                               return_tensors="pt")
        mask = t5.attention_mask.to(self.device)
        sequence = self.t5(t5.input_ids.to(self.device), attention_mask=mask if self.t5_mask else None
                           ).last_hidden_state.float()
        out = {"t5": sequence, "mask": mask}
        if not self.train_clip:  # a training CLIP-L runs live, with gradients, for every batch
            out["pooled"] = self.pooled(captions)
        return {k: v[0] for k, v in out.items()} if squeeze else out

    def batch(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        captions = [s.caption for s in samples]
        if not self.cached:
            clip = contextlib.nullcontext() if self.train_clip else self.placement.visiting(self.clip)
            with clip, self.placement.visiting(self.t5):
                out = self.encode(captions)
        else:
            entries = [self.cache.get(self._key(caption)) for caption in captions]
            out = {k: torch.stack([e[k] for e in entries]).to(self.device) for k in entries[0]}
        if self.train_clip:
            out["pooled"] = self.pooled(captions)
        return out
