"""`fluxlora estimate PRESET [--arch flux1-dev] [--vram-gib N]`: predicted peak GPU memory and
system RAM, from file headers; with blocks_to_swap auto, the swap chosen for N GiB free."""

from __future__ import annotations

import sys

from engine.preset import load_preset
from engine.preset_overrides import apply_overrides


def register(subparsers) -> None:
    parser = subparsers.add_parser("estimate", help="predict the peak GPU memory and system RAM of a preset")
    parser.add_argument("preset", metavar="PRESET")
    parser.add_argument("--arch", choices=("flux1-dev", "flux1-schnell"), default=None,
                        help="architecture to assume when the model file is not at hand (default flux1-dev)")
    parser.add_argument("--vram-gib", type=float, default=None, metavar="N",
                        help="the GPU memory to plan for (GiB free before training, e.g. 11.6 for a 12 GB card "
                             "with a desktop); chooses blocks_to_swap when the preset says auto")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from engine.vram import GIB, SwapChoiceError, detected_gpu_memory, estimate_vram, resolve_auto_swap

    values = apply_overrides(load_preset(args.preset).values, args.set)
    card = detected_gpu_memory()
    budget = int(args.vram_gib * GIB) if args.vram_gib is not None else card
    if values["blocks_to_swap"] == "auto":
        if budget is None:
            print("blocks_to_swap is auto: give the GPU memory to plan for with --vram-gib N "
                  "(no CUDA GPU here)", file=sys.stderr)
            return 1
        try:
            values, sentence = resolve_auto_swap(values, budget, context_counted=True, arch_name=args.arch)
        except SwapChoiceError as exc:
            print(str(exc), file=sys.stderr)
            return 1
        print(sentence)
    estimate = estimate_vram(values, arch_name=args.arch)
    print(f"model: {estimate.architecture}")
    print(estimate.table())
    print(estimate.host_table())
    for note in estimate.notes:
        print(f"note: {note}")
    if budget is not None:
        verdict = "fits" if estimate.total <= budget else "does NOT fit"
        where = f"{args.vram_gib:g} GiB asked for" if args.vram_gib is not None else f"this GPU: {budget / GIB:.2f} GiB"
        print(f"{where}; the run {verdict}")
    else:
        print("no CUDA GPU detected", file=sys.stderr)
    return 0
