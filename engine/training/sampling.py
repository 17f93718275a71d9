"""Sample images during a training run, as sd-scripts' sample_prompts do.

The run calls in at four points: `encode` while the text encoders are loaded (so T5 never has
to come back), `attach` once the model is ready, `at_first` before the first step and
`after_step` after every optimizer step. Images go through the run's own transformer (fp8,
block-swapped, with the LoRA being trained) and VAE, to `output_dir/sample/` with kohya's file
names, to TensorBoard and to the caller as SampleImage events. Sampling never touches the
training RNG: every image draws its noise from its own seeded generator, so a run with samples
trains exactly the LoRA one without would.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import torch

from engine.events import SAMPLING, SampleImage
from engine.fsutil import atomic_path
from engine.sampling.generate import SamplingStopped, decode, denoise, visiting
from engine.sampling.prompts import due, load_sample_prompts, sample_file_name, sampling_enabled
from engine.training.reporting import RunReporter

SAMPLE_FOLDER = "sample"


class TrainingSampler:
    def __init__(self, values: dict, reporter: RunReporter, stop: threading.Event):
        self.values = values
        self.reporter = reporter
        self.stop = stop
        self.enabled = sampling_enabled(values)
        self.prompts = load_sample_prompts(values) if self.enabled else []
        self.embeddings: list[tuple[dict, dict | None]] = []
        self.run = None

    def encode(self, encode_text) -> None:
        """encode_text([text]) -> {t5, mask, and pooled unless CLIP-L trains} with a batch of one; kept
        on the CPU. A training CLIP-L's pooled output is taken at sampling time, from the LoRA as it is."""
        if not self.enabled or self.embeddings:
            return
        for prompt in self.prompts:
            text = _cpu(encode_text([prompt.prompt]))
            negative = _cpu(encode_text([prompt.negative])) if prompt.cfg_scale != 1.0 else None
            self.embeddings.append((text, negative))
        self.reporter.log(f"{len(self.prompts)} sample prompts encoded")

    def attach(self, run) -> None:
        """The run's accelerator, model (.model.transformer), VAE (.latents.vae), device and dtype."""
        self.run = run

    def at_first(self, step: int, steps_per_epoch: int) -> None:
        if self.enabled and self.values["sample_at_first"]:
            self.sample(step, step // steps_per_epoch if step % steps_per_epoch == 0 else None)

    def after_step(self, step: int, epoch_end: int | None) -> None:
        if self.enabled and due(self.values, step, epoch_end):
            self.sample(step, epoch_end)

    def sample(self, step: int, epoch: int | None) -> None:
        accelerator = self.run.accelerator
        if accelerator.is_main_process:
            transformer = accelerator.unwrap_model(self.run.model.transformer)
            was_training = transformer.training
            transformer.eval()
            try:
                self._sample_all(transformer, step, epoch)
            except SamplingStopped:
                self.reporter.log("stop requested during sampling: the remaining sample images are skipped",
                                  "warning")
            finally:
                transformer.train(was_training)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        accelerator.wait_for_everyone()

    def _sample_all(self, transformer, step: int, epoch: int | None) -> None:
        run, values = self.run, self.values
        folder = Path(values["output_dir"]) / SAMPLE_FOLDER
        when = f"epoch {epoch}" if epoch is not None else f"step {step}"
        self.reporter.log(f"sample images at {when}: {len(self.prompts)} prompts")
        started = time.time()
        for number, (prompt, (text, negative)) in enumerate(zip(self.prompts, self.embeddings)):
            self.reporter.progress(SAMPLING, number, len(self.prompts))
            text, negative = self._with_pooled(prompt, text, negative)
            with run.accelerator.autocast():
                latents = denoise(transformer, prompt, text, negative, device=run.device, dtype=run.compute_dtype,
                                  t5_mask=values["apply_t5_attn_mask"], stop=self.stop)
            vae = run.latents.vae
            with visiting(vae, run.device, values["highvram"]):
                image = decode(vae, latents, prompt.width, prompt.height)
            path = folder / sample_file_name(values["output_name"], prompt, time.strftime("%Y%m%d%H%M%S"),
                                             epoch=epoch, step=step)
            with atomic_path(path) as temporary:
                image.save(temporary, format="PNG")
            self.reporter.image(f"sample/{prompt.index:02d}", np.asarray(image), step)
            self.reporter.event(SampleImage(str(path), prompt.prompt, prompt.index, step, epoch))
        self.reporter.progress(SAMPLING, len(self.prompts), len(self.prompts))
        self.reporter.log(f"sample images at {when} done in {time.time() - started:.1f} s ({folder})")


    def _with_pooled(self, prompt, text: dict, negative: dict | None) -> tuple[dict, dict | None]:
        if "pooled" in text:
            return text, negative
        clip = self.run.text
        was_training = clip.clip.training
        clip.clip.eval()
        try:
            text = dict(text, pooled=clip.pooled([prompt.prompt]).detach())
            if negative is not None:
                negative = dict(negative, pooled=clip.pooled([prompt.negative]).detach())
        finally:
            clip.clip.train(was_training)
        return text, negative


def _cpu(tensors: dict) -> dict:
    return {name: tensor.detach().cpu() for name, tensor in tensors.items()}
