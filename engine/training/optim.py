"""Optimizers and learning-rate schedules from preset values (kohya's names and arguments)."""

from __future__ import annotations

import ast

import torch


def parse_optimizer_args(text: str) -> dict:
    """'relative_step=False betas=0.9,0.99 eps=1e-8' -> {'relative_step': False, 'betas': (0.9, 0.99), ...}"""
    args = {}
    for word in text.split():
        key, equals, raw = word.partition("=")
        if not equals or not key:
            raise ValueError(f"optimizer_args: {word!r} is not key=value; write e.g. 'relative_step=False'")
        try:
            args[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            args[key] = raw
    return args


def create_optimizer(values: dict, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    name = values["optimizer"]
    lr = values["unet_lr"] or values["learning_rate"]
    args = parse_optimizer_args(values["optimizer_args"])
    try:
        if name == "AdamW":
            return torch.optim.AdamW(params, lr=lr, **args)
        if name == "AdamW8bit":
            import bitsandbytes

            return bitsandbytes.optim.AdamW8bit(params, lr=lr, **args)
        if name == "Adafactor":
            from transformers.optimization import Adafactor

            args.setdefault("relative_step", False)
            args.setdefault("scale_parameter", False)
            args.setdefault("warmup_init", False)
            return Adafactor(params, lr=None if args["relative_step"] else lr, **args)
        if name == "Prodigy":
            try:
                from prodigyopt import Prodigy
            except ImportError:
                raise ValueError("optimizer: Prodigy needs the prodigyopt package (pip install prodigyopt)") from None
            return Prodigy(params, lr=lr, **args)
    except TypeError as exc:
        raise ValueError(f"optimizer_args: {values['optimizer_args']!r} do not fit {name} ({exc})") from None
    raise ValueError(f"optimizer: {name!r} is not supported")


def warmup_steps(values: dict, total_steps: int) -> int:
    if values["lr_warmup_steps"] > 0:
        return values["lr_warmup_steps"]
    return int(total_steps * values["lr_warmup"] / 100)


def create_scheduler(values: dict, optimizer, total_steps: int):
    from diffusers.optimization import get_scheduler

    name = values["lr_scheduler"]
    warmup = warmup_steps(values, total_steps)
    if name == "constant" and warmup:
        name = "constant_with_warmup"  # kohya applies warmup to 'constant' too
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps,
                         num_cycles=values["lr_scheduler_num_cycles"], power=values["lr_scheduler_power"])
