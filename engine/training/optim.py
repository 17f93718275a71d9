"""Optimizers and learning-rate schedules from preset values (kohya's names and arguments)."""

from __future__ import annotations

import ast
import logging

import torch

# Importing transformers' Adafactor imports bitsandbytes, whose CPU backend warns on stderr about
# an optional 4-bit kernel package FluxLoRA never uses; it would precede our own error lines.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


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


def _optimizer_class(name: str):
    if name == "AdamW":
        return torch.optim.AdamW
    if name == "AdamW8bit":
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit
    if name == "Adafactor":
        from transformers.optimization import Adafactor

        return Adafactor
    if name == "Prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError:
            raise ValueError("optimizer: Prodigy needs the prodigyopt package (pip install prodigyopt)") from None
        return Prodigy
    raise ValueError(f"optimizer: {name!r} is not supported")


def optimizer_arguments(values: dict) -> dict:
    """The keyword arguments the optimizer gets, as sd-scripts builds them.

    Adafactor: relative_step is True unless the arguments say otherwise (transformers' and
    sd-scripts' default), and warmup_init=True switches it on; the other arguments keep
    transformers' defaults. Unknown keys and wrongly typed switches are errors naming the key.
    """
    import inspect

    name = values["optimizer"]
    args = parse_optimizer_args(values["optimizer_args"])
    accepted = inspect.signature(_optimizer_class(name).__init__).parameters
    for key, value in args.items():
        if key in ("params", "lr", "self") or key not in accepted:
            allowed = ", ".join(k for k in accepted if k not in ("self", "params", "lr") and
                                accepted[k].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                         inspect.Parameter.KEYWORD_ONLY))
            hint = "set the learning rate fields instead" if key == "lr" else f"{name} accepts {allowed}"
            raise ValueError(f"optimizer_args: {key!r} is not an argument of {name}; {hint}")
        if isinstance(accepted[key].default, bool) and not isinstance(value, bool):
            raise ValueError(f"optimizer_args: {key}={value!r} is not allowed, expected {key}=True or {key}=False")
    if name == "Adafactor":
        args.setdefault("relative_step", True)
        if args.get("warmup_init", False):
            args["relative_step"] = True  # transformers needs it for warmup_init; sd-scripts switches it on
    return args


def relative_step(values: dict) -> bool:
    """True when Adafactor sets its own step size (and the `adafactor` schedule follows it)."""
    return values["optimizer"] == "Adafactor" and bool(optimizer_arguments(values)["relative_step"])


def optimizer_problems(values: dict) -> list[str]:
    """Why the optimizer and schedule of `values` could not be built; checked before anything loads."""
    try:
        optimizer_arguments(values)
    except ValueError as exc:
        return [str(exc)]
    relative = relative_step(values)
    if relative and warmup_steps(values, 1_000_000):
        return ["lr_warmup_steps: Adafactor with relative_step=True follows its own schedule (the adafactor "
                "schedule), which has no warmup; set LR warmup to 0, or pass relative_step=False"]
    unet_lr = values["unet_lr"] or values["learning_rate"]
    if values["optimizer"] == "Prodigy" and values["text_encoder_lr"] not in (0, unet_lr):
        return [f"text_encoder_lr: Prodigy needs one learning rate for every group; the text encoder's "
                f"{values['text_encoder_lr']:g} differs from the transformer's {unet_lr:g}. Set them equal (Prodigy "
                "adapts the step size itself), or set the text encoder learning rate to 0"]
    if values["lr_scheduler"] == "adafactor" and not relative:
        return ["lr_scheduler: 'adafactor' is Adafactor's own schedule; it needs optimizer Adafactor with "
                "relative_step=True (or empty optimizer_args)"]
    return []


def optimizer_notes(values: dict) -> list[str]:
    """What the run tells the user about choices sd-scripts makes for them."""
    if not relative_step(values):
        return []
    return [f"Adafactor relative_step=True: Adafactor sets its own step size; the learning rate "
            f"{values['learning_rate']:g} is only the adafactor schedule's initial value and lr_scheduler "
            f"{values['lr_scheduler']!r} is replaced by 'adafactor' (as sd-scripts does)"]


def create_optimizer(values: dict, params) -> torch.optim.Optimizer:
    name = values["optimizer"]
    lr = values["unet_lr"] or values["learning_rate"]
    args = optimizer_arguments(values)
    if name == "Adafactor" and args["relative_step"]:
        lr = None  # Adafactor's own relative step; sd-scripts drops every group's lr too
        if params and isinstance(params[0], dict):
            params = [{k: v for k, v in group.items() if k != "lr"} for group in params]
    try:
        return _optimizer_class(name)(params, lr=lr, **args)
    except TypeError as exc:
        raise ValueError(f"optimizer_args: {values['optimizer_args']!r} do not fit {name} ({exc})") from None


def warmup_steps(values: dict, total_steps: int) -> int:
    if values["lr_warmup_steps"] > 0:
        return values["lr_warmup_steps"]
    return int(total_steps * values["lr_warmup"] / 100)


def create_scheduler(values: dict, optimizer, total_steps: int):
    from diffusers.optimization import get_scheduler

    if relative_step(values):
        from transformers.optimization import AdafactorSchedule

        return AdafactorSchedule(optimizer, initial_lr=values["learning_rate"])
    name = values["lr_scheduler"]
    warmup = warmup_steps(values, total_steps)
    if name == "constant" and warmup:
        name = "constant_with_warmup"  # kohya applies warmup to 'constant' too
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps,
                         num_cycles=values["lr_scheduler_num_cycles"], power=values["lr_scheduler_power"])
