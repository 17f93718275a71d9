"""Steps/s of the engine's training loop vs a bare hand-written diffusers + peft loop doing the
same math (same model file, LoRA layers, data, optimizer, batch) in one run. Target >= 0.9x.
Run: python benchmarks/engine_overhead.py [STEPS]  (default 200; a multiple of 4)"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.events import Progress  # noqa: E402
from engine.trainer import train  # noqa: E402
from tests.fixtures.datasets import tiny_training_values, write_images  # noqa: E402
from tests.fixtures.models import write_tiny_model_set, write_tiny_flux  # noqa: E402

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 200  # 4 images x STEPS/4 repeats, batch 1


def engine_rate(values) -> float:
    rates = []
    result = train(values, on_event=lambda e: rates.append(e.steps_per_second)
                   if isinstance(e, Progress) and e.phase == "training" else None)
    assert result.status == "completed", result.message
    return rates[-1]


def bare_rate(values) -> float:
    from engine.models.autoencoder import load_autoencoder
    from engine.models.flux import load_flux_transformer
    from engine.models.lora import add_lora, lora_parameters
    from engine.models.text_encoders import load_clip_l, load_t5, load_tokenizers
    from engine.training.flow import image_ids, pack_latents
    from PIL import Image
    import numpy as np

    images = sorted(Path(values["train_data_dir"]).glob("*/*.png"))
    vae = load_autoencoder(values["ae"])
    clip_tok, t5_tok = load_tokenizers(values["clip_l_tokenizer_path"], values["t5xxl_tokenizer_path"])
    clip, t5 = load_clip_l(values["clip_l"]), load_t5(values["t5xxl"])
    with torch.no_grad():
        latents, pooled, sequences = [], [], []
        for path in images:
            pixels = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)).permute(2, 0, 1)
            z = vae.encode((pixels / 127.5 - 1)[None]).latent_dist.mode()
            latents.append((z - vae.config.shift_factor) * vae.config.scaling_factor)
            caption = path.with_suffix(".txt").read_text()
            pooled.append(clip(clip_tok([caption], padding="max_length", max_length=77, truncation=True,
                                        return_tensors="pt").input_ids).pooler_output)
            sequences.append(t5(t5_tok([caption], padding="max_length", max_length=values["t5xxl_max_token_length"],
                                       truncation=True, return_tensors="pt").input_ids).last_hidden_state)
    model = load_flux_transformer(values["pretrained_model_name_or_path"], compute_dtype=torch.float32)
    torch.manual_seed(0)
    add_lora(model, values["network_dim"], values["network_alpha"])
    model.train()
    optimizer = torch.optim.AdamW(lora_parameters(model), lr=values["learning_rate"])
    height, width = latents[0].shape[-2:]
    ids, txt_ids = image_ids(height, width), torch.zeros(sequences[0].shape[1], 3)
    start = time.perf_counter()
    for step in range(STEPS):
        index = step % len(latents)
        x0 = pack_latents(latents[index])
        noise = torch.randn_like(x0)
        sigma = torch.sigmoid(torch.randn(1))
        noisy = (1 - sigma) * x0 + sigma * noise
        prediction = model(hidden_states=noisy, encoder_hidden_states=sequences[index], pooled_projections=pooled[index],
                           timestep=sigma, img_ids=ids, txt_ids=txt_ids, guidance=torch.ones(1)).sample
        loss = torch.nn.functional.mse_loss(prediction, noise - x0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return STEPS / (time.perf_counter() - start)


def main() -> None:
    torch.set_num_threads(torch.get_num_threads())
    folder = Path(tempfile.mkdtemp())
    try:
        files = write_tiny_model_set(folder / "models")
        write_tiny_flux(files["pretrained_model_name_or_path"], width=128, num_double=2, num_single=2,
                        dtype=torch.float32)
        write_images(folder / f"data/img/{STEPS // 4}_ohwx man", 4, size=(128, 128))
        values = tiny_training_values(files, folder, epoch=1, max_resolution="128,128", save_every_n_epochs=0,
                                      save_state_on_train_end=False, gradient_checkpointing=False)
        values["timestep_sampling"] = "sigmoid"
        engine = engine_rate(values)
        bare = bare_rate(values)
        print(f"engine loop: {engine:7.2f} steps/s ({STEPS} steps, tiny FLUX width 128, 128x128 images)")
        print(f"bare loop:   {bare:7.2f} steps/s")
        print(f"engine / bare: {engine / bare:.2f}x  (target >= 0.9)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
