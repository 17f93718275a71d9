"""Predicted system RAM of a training run, phase by phase (bytes), from the same facts as the
VRAM estimate. What each phase holds, following engine.training:
- loading encoders: T5-XXL (9.5 GB in bf16) is read tensor by tensor straight onto the GPU,
  CLIP-L (0.25 GB) through RAM; with caching both are freed before the transformer loads, so
  T5-XXL and the transformer are never held at once.
- caching: the cache entries (EntryCache keeps each one in RAM too: a T5 sequence is
  tokens x 4096 float32 per caption, a latent 16 x H/8 x W/8 float32 per image).
- transformer: the loader reads a tensor at a time straight to where it stays: the swapped
  blocks into RAM (then pinned, a tensor at a time), everything else onto the GPU; so only the
  swapped blocks are ever in RAM, never the whole transformer (11.1 GiB in fp8).
- training: the swapped blocks' pinned copies (page-locked: the OS cannot page them out) and
  the cache entries; uncached text encoders or VAE wait in RAM between batches.
- saving: the streaming writer holds one tensor at a time; without mem_eff_save the whole LoRA
  is copied to RAM in the save precision; a state save copies the optimizer state out too.
Plus the process itself: Python, torch with its CUDA libraries, Gradio (BASELINE).
"""

from __future__ import annotations

GIB = 1024 ** 3
T5_LARGEST = 32128 * 4096 * 2  # T5-XXL's token embedding in bf16, its largest tensor
SLAB = 16 << 20  # engine.models.safetensors_header.read_tensor_into's read buffer
BASELINE = 3 * GIB  # Python + torch + CUDA runtime + the GUI, measured roughly on Windows installs


def host_ram_phases(values: dict, largest_tensor: int, swapped_bytes: int, lora_count: int,
                    encoder_bytes: dict[str, int], images: int = 25, captions: int = 25) -> dict[str, int]:
    """Bytes of RAM per phase. `largest_tensor`: the transformer's largest tensor as stored; `swapped_bytes`: the swapped blocks'; `encoder_bytes`: {"t5", "clip", "vae"} in bf16;
    `images` / `captions`: the dataset's (25, the 12 GB recipe's typical set, when unknown)."""
    from engine.preset import parse_resolution

    width, height = parse_resolution(values["max_resolution"])
    text_entry = values["t5xxl_max_token_length"] * (4096 * 4 + 8) + 768 * 4
    latent_entry = 16 * (height // 8) * (width // 8) * 4
    cached = (text_entry * captions if values["flux1_cache_text_encoder_outputs"] else 0) + (
        latent_entry * images if values["cache_latents"] else 0)
    encoders = encoder_bytes["t5"] + encoder_bytes["clip"]
    waiting = 0  # encoders parked in RAM during training (uncached, highvram off)
    if not values["highvram"]:
        if not values["flux1_cache_text_encoder_outputs"]:
            waiting += encoders
        if not values["cache_latents"]:
            waiting += encoder_bytes["vae"]
    largest = largest_tensor + SLAB  # reading straight to the GPU: one tensor and the read buffer
    swap = values["blocks_to_swap"]
    # The streaming writer (and a state's optimizer file, written storage by storage) hold one
    # tensor at a time; without mem_eff_save the whole LoRA is in RAM at the save precision.
    save = 0 if values["mem_eff_save"] else lora_count * {"fp16": 2, "bf16": 2}.get(values["save_precision"], 4)
    return {
        "loading encoders": BASELINE + encoder_bytes["clip"] + T5_LARGEST,
        "caching": BASELINE + cached,
        "loading transformer": BASELINE + cached + waiting + (swapped_bytes if swap else 0) + largest,
        "training": BASELINE + cached + waiting + swapped_bytes,
        "saving": BASELINE + cached + waiting + swapped_bytes + save,
    }
