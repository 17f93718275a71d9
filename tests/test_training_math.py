"""Pure pieces of the training run: buckets, batch order, noise levels, packing, optimizers,
schedules and cache keys. Exact values; no models needed."""

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from engine.preset import default_values
from engine.training import flow
from engine.training.cache import EntryCache, entry_key
from engine.training.data import (Sample, balance_regularisation, epoch_batches, fit_to_bucket, load_samples,
                                  process_batches, steps_in_epoch)
from engine.training.optim import create_optimizer, create_scheduler, parse_optimizer_args


def values(**overrides):
    return dict(default_values(), **overrides)


def test_fit_to_bucket_resizes_to_cover_and_crops_the_centre():
    image = Image.new("L", (128, 64))
    image.putdata([x for y in range(64) for x in range(128)])  # pixel value = column
    fitted = fit_to_bucket(image, (64, 64))
    assert fitted.size == (64, 64)
    assert fitted.getpixel((0, 10)) == 32 and fitted.getpixel((63, 10)) == 95


def samples():
    return [Sample(f"a{i}.png", "a", 2, (64, 64)) for i in range(3)] + \
           [Sample(f"b{i}.png", "b", 1, (128, 64)) for i in range(3)]


def test_epoch_order_is_a_pure_function_of_seed_and_epoch_with_batches_from_one_bucket():
    first = epoch_batches(samples(), 2, seed=42, epoch=1)
    assert first == epoch_batches(samples(), 2, seed=42, epoch=1)
    assert first != epoch_batches(samples(), 2, seed=42, epoch=2)
    assert first != epoch_batches(samples(), 2, seed=43, epoch=1)
    flat = sorted(i for batch in first for i in batch)
    assert flat == [0, 0, 1, 1, 2, 2, 3, 4, 5]  # every image, repeats times
    assert all(len({samples()[i].bucket for i in batch}) == 1 for batch in first)
    assert sorted(len(batch) for batch in first) == [1, 2, 2, 2, 2]  # 6 of one bucket, 3 of the other
    assert steps_in_epoch(samples(), 2, 1) == 5 and steps_in_epoch(samples(), 2, 2) == 3


@pytest.mark.parametrize("processes, accumulation", [(2, 1), (3, 1), (4, 1), (2, 2), (4, 2)])
def test_every_process_gets_as_many_batches_as_the_step_count_says(processes, accumulation):
    batches = epoch_batches(samples(), 2, seed=42, epoch=1)  # 5 batches
    shares = [process_batches(batches, rank, processes) for rank in range(processes)]
    steps = steps_in_epoch(samples(), 2, accumulation, processes)
    assert {len(share) for share in shares} == {-(-5 // processes)}  # the same for all: no one waits forever
    assert {-(-len(share) // accumulation) for share in shares} == {steps}
    dealt = [batch for round_ in zip(*shares) for batch in round_]
    assert dealt[:5] == batches and dealt[5:] == batches[:len(dealt) - 5]  # the first ones repeated, as accelerate
    assert process_batches(batches, 0, 1) == batches


def draw(mode, shift=3.0, scale=1.0, tokens=256, n=6):
    return flow.sample_sigmas(mode, n, torch.Generator().manual_seed(0), shift=shift, sigmoid_scale=scale,
                              image_tokens=tokens)


def test_noise_level_modes():
    normal = torch.randn(6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(draw("uniform"), torch.rand(6, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(draw("sigmoid", scale=2.0), torch.sigmoid(2.0 * normal))
    t = torch.sigmoid(normal)
    assert torch.allclose(draw("shift", shift=3.0), 3 * t / (1 + 2 * t))
    assert torch.allclose(draw("shift", shift=1.0), t)
    # flux_shift moves the logit by mu: 0.5 at 256 image tokens, 1.15 at 4096.
    logit = torch.log(t / (1 - t))
    assert torch.allclose(draw("flux_shift", tokens=256), torch.sigmoid(logit + 0.5), atol=1e-6)
    assert torch.allclose(draw("flux_shift", tokens=4096), torch.sigmoid(logit + 1.15), atol=1e-6)
    levels = draw("sigma", shift=1.0, n=200)
    assert torch.allclose(levels * 1000, (levels * 1000).round(), rtol=0, atol=1e-3) and levels.min() > 0 and levels.max() <= 1
    with pytest.raises(ValueError, match="timestep_sampling: 'logit' is not a sampling mode"):
        draw("logit")


def test_packing_and_image_ids():
    latents = torch.randn(2, 16, 4, 6)
    packed = flow.pack_latents(latents)
    assert packed.shape == (2, 6, 64)
    # b c (h 2) (w 2) -> b (h w) (c 2 2), element by element
    expected = torch.empty(2, 6, 64)
    for row in range(2):
        for col in range(3):
            for channel in range(16):
                for dy in range(2):
                    for dx in range(2):
                        expected[:, row * 3 + col, channel * 4 + dy * 2 + dx] = latents[:, channel, 2 * row + dy,
                                                                                       2 * col + dx]
    assert torch.equal(packed, expected)
    ids = flow.image_ids(4, 6)
    assert ids.tolist() == [[0.0, r, c] for r in range(2) for c in range(3)]


def test_optimizer_args_are_parsed_as_literals_never_evaluated():
    assert parse_optimizer_args("relative_step=False scale_parameter=False warmup_init=False") == {
        "relative_step": False, "scale_parameter": False, "warmup_init": False}
    assert parse_optimizer_args("betas=0.9,0.99 eps=1e-8 weight_decay=0.01 d_coef=2") == {
        "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.01, "d_coef": 2}
    assert parse_optimizer_args("name=__import__('os')") == {"name": "__import__('os')"}  # a string, not code
    with pytest.raises(ValueError, match="optimizer_args: 'relative_step' is not key=value"):
        parse_optimizer_args("relative_step")


def test_optimizers_and_schedules():
    import bitsandbytes
    from transformers.optimization import Adafactor

    params = [torch.nn.Parameter(torch.zeros(4))]
    adafactor = create_optimizer(values(optimizer="Adafactor", learning_rate=1e-4, unet_lr=0,
                                        optimizer_args="relative_step=False scale_parameter=False"), params)
    assert isinstance(adafactor, Adafactor) and adafactor.param_groups[0]["lr"] == 1e-4
    adam8 = create_optimizer(values(optimizer="AdamW8bit", unet_lr=3e-4, optimizer_args=""), params)
    assert isinstance(adam8, bitsandbytes.optim.AdamW8bit) and adam8.param_groups[0]["lr"] == 3e-4
    with pytest.raises(ValueError, match="optimizer_args: 'momentum' is not an argument of AdamW; AdamW accepts betas, eps"):
        create_optimizer(values(optimizer="AdamW", optimizer_args="momentum=0.9"), params)

    def rates(**settings):
        optimizer = torch.optim.AdamW(params, lr=1.0)
        scheduler = create_scheduler(values(**settings), optimizer, total_steps=10)
        out = []
        for _ in range(10):
            out.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
        return out

    assert rates(lr_scheduler="constant", lr_warmup_steps=0) == [1.0] * 10
    assert rates(lr_scheduler="constant", lr_warmup_steps=2)[:3] == [0.0, 0.5, 1.0]
    assert rates(lr_scheduler="constant", lr_warmup_steps=0, lr_warmup=20.0)[:3] == [0.0, 0.5, 1.0]
    linear = rates(lr_scheduler="linear", lr_warmup_steps=0)
    assert linear == pytest.approx([1.0 - k / 10 for k in range(10)])
    cosine = rates(lr_scheduler="cosine", lr_warmup_steps=0)
    assert cosine == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 10)) for k in range(10)])


def test_cache_keys_and_disk_entries(tmp_path):
    base = dict(kind="latent", image="abc", bucket=(64, 64), vae="v1")
    key = entry_key(**base)
    assert key == entry_key(**base)
    for change in (dict(image="abd"), dict(bucket=(64, 128)), dict(vae="v2")):
        assert entry_key(**dict(base, **change)) != key
    cache = EntryCache(tmp_path)
    cache.put(key, {"latent": torch.arange(6.0).view(2, 3)})
    assert [p.name for p in tmp_path.iterdir()] == [f"{key}.safetensors"]  # no temporary left behind
    assert torch.equal(EntryCache(tmp_path).get(key)["latent"], torch.arange(6.0).view(2, 3))
    (tmp_path / f"{key}.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    assert EntryCache(tmp_path).get(key) is None  # damaged: recomputed, never trusted
    assert EntryCache(None).get(key) is None


def test_regularisation_images_fill_as_many_slots_as_the_training_images():
    reg = [Sample(f"r{i}.png", "man", 1, (64, 64)) for i in range(3)]
    assert [s.repeats for s in balance_regularisation(reg, 2)] == [1, 1]        # the third is left out
    assert [s.repeats for s in balance_regularisation(reg, 8)] == [3, 3, 2]     # one more each, in turn
    heavy = [Sample("r.png", "man", 5, (64, 64)), Sample("s.png", "man", 5, (64, 64))]
    assert [s.repeats for s in balance_regularisation(heavy, 4)] == [5]         # kohya keeps the overshoot


def test_samples_with_regularisation_folder(tmp_path):
    from tests.fixtures.datasets import write_images

    write_images(tmp_path / "img/3_ohwx man", 2)
    write_images(tmp_path / "reg/1_man", 4, captions=False)
    samples = load_samples(values(train_data_dir=str(tmp_path / "img"), reg_data_dir=str(tmp_path / "reg"),
                                  max_resolution="64,64", min_bucket_reso=64))
    assert [(Path(s.image_path).name, s.caption, s.repeats) for s in samples] == [
        ("photo 0.png", "ohwx man, photo 0", 3), ("photo 1.png", "ohwx man, photo 1", 3),
        ("photo 0.png", "man", 2), ("photo 1.png", "man", 2), ("photo 2.png", "man", 1), ("photo 3.png", "man", 1)]
    assert steps_in_epoch(samples, 1, 1) == 12  # kohya: images x repeats x 2 with regularisation
