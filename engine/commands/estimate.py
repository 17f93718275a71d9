"""`fluxlora estimate PRESET [--arch flux1-dev]`: predicted peak GPU memory, from file headers."""

from __future__ import annotations

import sys

from engine.preset import apply_overrides, load_preset


def register(subparsers) -> None:
    parser = subparsers.add_parser("estimate", help="predict the peak GPU memory of a preset")
    parser.add_argument("preset", metavar="PRESET")
    parser.add_argument("--arch", choices=("flux1-dev", "flux1-schnell"), default=None,
                        help="architecture to assume when the model file is not at hand (default flux1-dev)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from engine.vram import GIB, detected_gpu_memory, estimate_vram

    values = apply_overrides(load_preset(args.preset).values, args.set)
    estimate = estimate_vram(values, arch_name=args.arch)
    print(f"model: {estimate.architecture}")
    print(estimate.table())
    for note in estimate.notes:
        print(f"note: {note}")
    card = detected_gpu_memory()
    if card is not None:
        verdict = "fits" if estimate.total <= card else "does NOT fit"
        print(f"this GPU: {card / GIB:.2f} GiB; the run {verdict}")
    else:
        print("no CUDA GPU detected", file=sys.stderr)
    return 0
