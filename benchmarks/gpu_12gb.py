"""FLUX.1-dev LoRA training on a 12 GiB budget, measured on an NVIDIA GPU.

Builds FLUX.1-dev's full transformer with random weights directly in fp8 on the GPU (no
download) and writes it in the original single-file layout; the text encoders keep their real
output widths (T5 4096, CLIP 768) but one layer each, since their outputs are cached before
training anyway. Caps the process at 12 GiB (torch.cuda.set_per_process_memory_fraction) and
trains through the engine with presets/flux1-dev-12gb.json at 768x768, rank 64, batch 1,
Adafactor. Prints peak allocated/reserved memory during training, the median seconds per
step of 10 steps after warm-up, the ratio to the card's compute floor (FLOPs per step /
measured bf16 matmul rate) and the VRAM estimate against the measured peak.

Run on a machine with CUDA: python benchmarks/gpu_12gb.py [--budget-gib 12] [--blocks-to-swap N] [--keep DIR]
Needs about 14 GB of free disk for the generated files and 32 GB of RAM.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bfl_layout import bfl_shapes  # noqa: E402

GIB = 1024 ** 3
WARMUP, MEASURED = 5, 10


def write_random_flux_fp8(path: Path, arch) -> None:
    """Random weights made on the GPU, stored float8_e4m3fn (matrices) / bf16 (the rest), one
    tensor at a time, in BFL's single-file layout."""
    shapes = bfl_shapes(arch)
    dtypes = {name: ("F8_E4M3", 1) if len(shape) == 2 else ("BF16", 2) for name, shape in shapes.items()}
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = dtypes[name][1]
        for side in shape:
            size *= side
        header[name] = {"dtype": dtypes[name][0], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    generator = torch.Generator("cuda").manual_seed(0)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape in shapes.items():
            values = torch.randn(shape, device="cuda", generator=generator, dtype=torch.bfloat16) * 0.02
            if name.endswith("scale"):
                values = torch.ones(shape, device="cuda", dtype=torch.bfloat16)
            stored = values.to(torch.float8_e4m3fn) if dtypes[name][0] == "F8_E4M3" else values
            handle.write(stored.view(torch.uint8).cpu().numpy().tobytes())


def write_support_files(folder: Path) -> dict:
    """FLUX's real VAE architecture and one-layer text encoders with the real output widths."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from tests.fixtures.models import vae_to_ldm, write_tiny_tokenizers

    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2,
                        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, use_quant_conv=False, use_post_quant_conv=False)
    save_file({k: v.contiguous() for k, v in vae_to_ldm(vae.state_dict(), 4).items()}, str(folder / "ae.safetensors"))
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=1,
                                        num_attention_heads=12, max_position_embeddings=77, eos_token_id=2))
    save_file({"text_model." + k.removeprefix("text_model."): v.half().contiguous()
               for k, v in clip.state_dict().items() if "position_ids" not in k}, str(folder / "clip_l.safetensors"))
    t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=1, num_heads=64,
                                 feed_forward_proj="gated-gelu"))
    save_file({k: v.half().contiguous() for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"},
              str(folder / "t5xxl_fp16.safetensors"))
    clip_dir, t5_dir = write_tiny_tokenizers(folder)
    return {"ae": str(folder / "ae.safetensors"), "clip_l": str(folder / "clip_l.safetensors"),
            "t5xxl": str(folder / "t5xxl_fp16.safetensors"), "clip_l_tokenizer_path": str(clip_dir),
            "t5xxl_tokenizer_path": str(t5_dir)}


def matmul_rate() -> float:
    """Measured dense bf16 matmul FLOP/s on this card."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    return 20 * 2 * 8192 ** 3 / (time.perf_counter() - start)


def step_flops(arch, image_tokens: int, text_tokens: int) -> float:
    """The Linear layers: forward 2·N·T, checkpoint recompute 2·N·T and backward to the activations
    2·N·T (the base is frozen: no weight gradients), LoRA ignored. Attention per block: forward
    4·T²·w (scores and weighted sum), recompute 4·T²·w, backward 8·T²·w (it has no weights, so its
    backward is twice its forward)."""
    from engine.vram import block_parameters

    double, single, rest = block_parameters(arch)
    params = arch.num_double * sum(double.values()) + arch.num_single * sum(single.values()) + rest
    tokens = image_tokens + text_tokens
    attention = (arch.num_double + arch.num_single) * 16 * tokens * tokens * arch.width
    return 3 * 2 * params * tokens + attention


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget-gib", type=float, default=12.0)
    parser.add_argument("--keep", metavar="DIR", help="keep the generated files in DIR")
    parser.add_argument("--blocks-to-swap", default=None,
                        help="override the preset's blocks_to_swap (kohya's count, or auto: the least swap "
                             "the estimate fits in the budget), e.g. to find what fits")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("No CUDA GPU here: this benchmark measures GPU memory and speed and only runs on an NVIDIA card.")
        return 0

    import numpy as np
    from PIL import Image

    from engine.events import Log, Progress
    from engine.models.flux import FLUX1_DEV
    from engine.preset import load_preset
    from engine.preset_overrides import parse_option_text
    from engine.trainer import train
    from engine.vram import estimate_vram, resolve_auto_swap

    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fluxlora-gpu-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        model = folder / "flux1-dev-random-fp8.safetensors"
        if not model.exists():
            print("writing a random FLUX.1-dev transformer in fp8 ...", flush=True)
            write_random_flux_fp8(model, FLUX1_DEV)
        files = write_support_files(folder)
        torch.cuda.empty_cache()  # the generator's cached blocks must not count against the budget
        images = folder / "data/img/1_ohwx man"
        images.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for index in range(4):
            Image.fromarray(rng.integers(0, 255, (768, 768, 3), dtype=np.uint8)).save(images / f"{index}.png")
            (images / f"{index}.txt").write_text("ohwx man, photo")
        values = dict(load_preset(ROOT / "presets/flux1-dev-12gb.json").values, **files,
                      pretrained_model_name_or_path=str(model), train_data_dir=str(folder / "data/img"),
                      output_dir=str(folder / "out"), logging_dir=str(folder / "log"), output_name="gpu12",
                      max_train_steps=WARMUP + MEASURED + 1, save_every_n_epochs=0, save_state_on_train_end=False,
                      t5xxl_max_token_length=512)
        if args.blocks_to_swap is not None:
            values["blocks_to_swap"] = parse_option_text("blocks_to_swap", args.blocks_to_swap)
        values, chosen = resolve_auto_swap(values, int(args.budget_gib * GIB), context_counted=True)
        if chosen:
            print(chosen)
        estimate = estimate_vram(values)
        # The cap and max_memory_reserved cover PyTorch's allocator only; the CUDA context is outside it.
        predicted = estimate.total - estimate.parts["CUDA context"]
        print(f"blocks_to_swap {values['blocks_to_swap']}; VRAM estimate (fluxlora estimate):")
        print(estimate.table())
        print("per phase (device tensors): " + ", ".join(f"{phase} {value / GIB:.2f}"
                                                         for phase, value in estimate.phases.items()), flush=True)

        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.budget_gib * GIB / total))
        stamps = []

        def on_event(event):
            if isinstance(event, Log) and event.text.startswith("loading the transformer"):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            if isinstance(event, Progress) and event.phase == "training":
                torch.cuda.synchronize()
                stamps.append(time.perf_counter())
            if isinstance(event, Log) and event.level != "info":
                print(f"[{event.level}] {event.text}", flush=True)

        result = train(values, on_event=on_event)
        if result.status != "completed":
            print(f"training failed: {result.message}")
            print(f"peak reserved before the failure: {torch.cuda.max_memory_reserved() / GIB:.2f} GiB; "
                  f"estimate without CUDA context: {predicted / GIB:.2f} GiB. Try --blocks-to-swap "
                  f"{values['blocks_to_swap'] + 4}.")
            return 1
        allocated, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
        intervals = [b - a for a, b in zip(stamps, stamps[1:])][WARMUP:WARMUP + MEASURED]
        seconds = statistics.median(intervals)
        rate = matmul_rate()
        flops = step_flops(FLUX1_DEV, (768 // 16) ** 2, values["t5xxl_max_token_length"])
        print(f"GPU: {torch.cuda.get_device_name(0)}, budget {args.budget_gib:.1f} GiB")
        print(f"peak allocated during training: {allocated / GIB:.2f} GiB")
        print(f"peak reserved during training:  {reserved / GIB:.2f} GiB")
        print(f"seconds per step (median of {len(intervals)} after {WARMUP} warm-up): {seconds:.3f}")
        print(f"bf16 matmul rate: {rate / 1e12:.0f} TFLOP/s; FLOPs per step: {flops / 1e12:.1f} T")
        print(f"compute floor: {flops / rate:.3f} s/step; measured / floor: {seconds / (flops / rate):.2f}x")
        error = predicted / reserved - 1
        verdict = "within the 10% target" if abs(error) <= 0.10 else "OUTSIDE the 10% target"
        print(f"estimate without CUDA context {predicted / GIB:.2f} GiB vs peak reserved {reserved / GIB:.2f} GiB: "
              f"{error:+.1%}, {verdict}")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
