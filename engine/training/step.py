"""One optimizer step of FLUX flow matching: noise the latents, predict, MSE, backward, update."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from engine.training import flow
from engine.training.data import Sample


@dataclass(frozen=True)
class NoiseSettings:
    """The preset's choices that shape the loss (FACTS.md, "Training math")."""

    seed: int
    timestep_sampling: str
    discrete_flow_shift: float
    sigmoid_scale: float
    model_prediction_type: str
    guidance_scale: float
    apply_t5_attn_mask: bool
    max_grad_norm: float

    @classmethod
    def from_values(cls, values: dict) -> NoiseSettings:
        return cls(**{name: values[name] for name in cls.__dataclass_fields__})


class FlowMatchingStep:
    def __init__(self, settings: NoiseSettings, accelerator, model, latents, text, compute_dtype: torch.dtype):
        self.settings = settings
        self.accelerator = accelerator
        self.model = model  # engine.training.model_setup.TrainableModel
        self.latents = latents  # engine.training.latents.LatentEncoding
        self.text = text  # engine.training.text.TextEncoding
        self.dtype = compute_dtype
        self.device = accelerator.device

    def run(self, batches: list[list[Sample]], step: int) -> float:
        """One optimizer step over `batches` (gradient accumulation); returns the summed loss."""
        accelerator, model = self.accelerator, self.model
        # Noise is a pure function of (seed, step), so a resumed run draws what the uninterrupted one did.
        generator = torch.Generator().manual_seed(self.settings.seed * 1_000_003 + step)
        total = 0.0
        for index, samples in enumerate(batches):
            last = index == len(batches) - 1
            sync = accelerator.no_sync(model.transformer) if not last else contextlib.nullcontext()
            swap = model.swapper.forward_context() if model.swapper else contextlib.nullcontext()
            with sync, swap, accelerator.autocast():
                loss = self.loss(samples, generator) / len(batches)
                accelerator.backward(loss)
            total += loss.detach().item()
        if self.settings.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.params, self.settings.max_grad_norm)
        model.optimizer.step()
        model.scheduler.step()
        model.optimizer.zero_grad(set_to_none=True)
        return total

    def loss(self, samples: list[Sample], generator: torch.Generator) -> torch.Tensor:
        settings, device, dtype = self.settings, self.device, self.dtype
        latents = self.latents.batch(samples)
        text = self.text.batch(samples)
        batch, _, height, width = latents.shape
        x0 = flow.pack_latents(latents)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        sigmas = flow.sample_sigmas(settings.timestep_sampling, batch, generator, shift=settings.discrete_flow_shift,
                                    sigmoid_scale=settings.sigmoid_scale, image_tokens=x0.shape[1]).to(device)
        noisy = (1.0 - sigmas.view(-1, 1, 1)) * x0 + sigmas.view(-1, 1, 1) * noise
        kwargs = {}
        if settings.apply_t5_attn_mask:
            image_mask = torch.ones(batch, x0.shape[1], dtype=torch.bool, device=device)
            mask = torch.cat([text["mask"].bool(), image_mask], dim=1)
            kwargs["joint_attention_kwargs"] = {"attention_mask": mask[:, None, None, :]}
        guidance = None
        if self.model.has_guidance:
            guidance = torch.full((batch,), settings.guidance_scale, device=device, dtype=dtype)
        prediction = self.model.transformer(
            hidden_states=noisy.to(dtype), encoder_hidden_states=text["t5"].to(dtype),
            pooled_projections=text["pooled"].to(dtype), timestep=sigmas.to(dtype),
            img_ids=flow.image_ids(height, width).to(device),
            txt_ids=torch.zeros(text["t5"].shape[1], 3, device=device), guidance=guidance, **kwargs,
        ).sample
        prediction = flow.apply_prediction_type(settings.model_prediction_type, prediction.float(), noisy, sigmas)
        return torch.nn.functional.mse_loss(prediction, (noise - x0).float())
