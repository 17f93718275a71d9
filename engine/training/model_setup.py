"""The trainable model: the FLUX transformer (fp8 base, swapped blocks) with its LoRA, the
optimizer and the schedule, placed and wrapped by accelerate."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from engine.events import LOADING
from engine.training.optim import create_optimizer, create_scheduler
from engine.training.reporting import RunReporter


@dataclass
class TrainableModel:
    transformer: torch.nn.Module  # wrapped by accelerate
    swapper: object | None  # engine.offload.BlockSwapper when blocks_to_swap > 0
    params: list[torch.nn.Parameter]  # the LoRA's, the only trained tensors (CLIP-L's first, as sd-scripts)
    optimizer: torch.optim.Optimizer
    scheduler: object
    has_guidance: bool
    text_lora: torch.nn.Module | None = None  # CLIP-L with its LoRA, when the text encoder trains
    text_encoder: torch.nn.Module | None = None  # the same, wrapped by accelerate: what the step runs


def load_transformer_with_lora(values: dict, device: torch.device, compute_dtype: torch.dtype,
                               adapter: Path | None, reporter: RunReporter, text_lora=None):
    """The base transformer with a fresh LoRA (seeded), or the LoRA of `adapter` / `network_weights`."""
    from engine.models.flux import load_flux_transformer
    from engine.models.lora import add_lora, load_lora, lora_parameters

    reporter.progress(LOADING, 0, 0)
    fp8 = values["fp8_base"] or values["fp8_base_unet"]
    reporter.log(f"loading the transformer{' in fp8' if fp8 else ''}")
    swap = values["blocks_to_swap"]
    transformer = load_flux_transformer(values["pretrained_model_name_or_path"], fp8=fp8,
                                        compute_dtype=compute_dtype, device=_placement(values, swap, device))
    torch.manual_seed(values["seed"])  # the LoRA's initial weights
    add_lora(transformer, values["network_dim"], values["network_alpha"], values["train_blocks"],
             ranks=_file_ranks(adapter or values["network_weights"], reporter))
    if values["full_bf16"]:
        for parameter in lora_parameters(transformer):
            parameter.data = parameter.data.to(torch.bfloat16)
    if adapter is not None:
        load_lora((transformer, text_lora), adapter)
    elif values["network_weights"]:
        reporter.log(f"starting from LoRA {values['network_weights']}")
        load_lora((transformer, text_lora), values["network_weights"])
    if values["gradient_checkpointing"]:
        transformer.enable_gradient_checkpointing()
    swapper = _swap_blocks(transformer, swap, device, reporter) if swap else None
    transformer.train()
    return transformer, swapper


def _placement(values: dict, swap: int, device: torch.device):
    """With swapping, the swapped blocks load into RAM and the rest straight onto the GPU."""
    if not swap:
        return device
    from engine.models.flux import infer_flux_architecture
    from engine.models.safetensors_header import read_header
    from engine.offload import swap_placement

    path = values["pretrained_model_name_or_path"]
    arch = infer_flux_architecture(read_header(path).shapes(), source=path)
    return swap_placement(arch.num_double, arch.num_single, swap, device)


def _file_ranks(source, reporter: RunReporter):
    """A LoRA file with a rank per layer type or input-layer LoRAs decides the layers and ranks."""
    from engine.models.lora_ranks import describe_ranks, per_layer_ranks

    ranks = per_layer_ranks(source) if source else None
    if ranks is not None:
        reporter.log(f"{Path(source).name} has its own rank per layer ({describe_ranks(ranks)}): training its "
                     "layers at its ranks, as sd-scripts does with dim_from_weights; network_dim is not used")
    return ranks


def _swap_blocks(transformer, swap: int, device: torch.device, reporter: RunReporter):
    from engine.offload import BlockSwapper

    swapper = BlockSwapper(transformer, swap, device)
    BlockSwapper.move_rest(transformer, device)
    double = sum(1 for block in swapper.swapped if block in transformer.transformer_blocks)
    reporter.log(f"blocks_to_swap {swap}: {double} double and {len(swapper.swapped) - double} single "
                 f"transformer blocks stay in system RAM and stream to {device}")
    return swapper


def prepare_for_training(accelerator, transformer, swapper, values: dict, total_steps: int,
                         text_lora=None) -> TrainableModel:
    """Optimizer and schedule for the LoRA; accelerate wraps them (and owns their state files)."""
    from engine.models.lora import lora_parameters

    groups = [{"params": lora_parameters(transformer), "lr": values["unet_lr"] or values["learning_rate"]}]
    if text_lora is not None:  # sd-scripts' order: the text encoder's group first
        groups.insert(0, {"params": lora_parameters(text_lora), "lr": values["text_encoder_lr"]})
    params = [parameter for group in groups for parameter in group["params"]]
    optimizer = create_optimizer(values, groups)
    scheduler = create_scheduler(values, optimizer, total_steps)
    # With swapping the model is already placed block by block; accelerate must not move it whole.
    # A training CLIP-L is wrapped too, so several processes average its gradients.
    models, placement = [transformer], [swapper is None]
    if text_lora is not None:  # already on its device
        models, placement = models + [text_lora], placement + [False]
    *wrapped_models, optimizer = accelerator.prepare(*models, optimizer, device_placement=placement + [True])
    wrapped = wrapped_models[0]
    accelerator.register_for_checkpointing(scheduler)
    # State folders hold only the LoRA (ours), never the frozen base model.
    accelerator.register_save_state_pre_hook(lambda models, weights, folder: weights.clear())
    accelerator.register_load_state_pre_hook(lambda models, folder: models.clear())
    return TrainableModel(wrapped, swapper, params, optimizer, scheduler, transformer.config.guidance_embeds,
                          text_lora, wrapped_models[1] if text_lora is not None else None)
