"""`fluxlora sample PRESET [--lora FILE ...] [--prompt TEXT ...]`: an epoch x prompt comparison grid."""

from __future__ import annotations

import signal
import sys
import threading

from engine.commands import CommandError
from engine.preset import load_preset
from engine.preset_overrides import apply_overrides


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sample", help="draw the same prompts with several LoRA files (every epoch of the run by default) as one grid")
    parser.add_argument("preset", metavar="PRESET", help="the preset the LoRAs were trained with (models, memory plan)")
    parser.add_argument("--lora", action="append", default=[], metavar="FILE",
                        help="a LoRA file (repeatable); default: every LoRA of output_dir/output_name, in order")
    parser.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                        help="a prompt with kohya's options, e.g. 'ohwx man --w 768 --h 768 --s 20' (repeatable); "
                             "default: the preset's sample_prompts")
    parser.add_argument("--seed", type=int, default=None, help="noise seed of prompt 1 (prompt i: seed + i); "
                                                               "default: the preset's seed")
    parser.add_argument("--strength", type=float, default=1.0, help="LoRA strength (default 1.0)")
    parser.add_argument("--no-base", action="store_true", help="leave out the row without a LoRA")
    parser.add_argument("--out", metavar="FILE", help="grid file (default output_dir/sample/NAME_compare_TIME.png)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from engine.console import ProgressPrinter
    from engine.sampling.compare import compare_loras, compare_prompts, run_lora_files
    from engine.preflight.models import check_model_files

    values = apply_overrides(load_preset(args.preset).values, args.set)
    problems, _ = check_model_files(values)  # headers only: a wrong or missing file is named in seconds
    if problems:
        raise CommandError("; ".join(problems))
    loras = args.lora or [str(p) for p in run_lora_files(values["output_dir"], values["output_name"])]
    if not loras and args.no_base:
        raise CommandError(f"no LoRA files given and none of {values['output_name']} in {values['output_dir']}")
    prompts = compare_prompts(args.prompt or values["sample_prompts"], values["seed"] if args.seed is None else args.seed)
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    printer = ProgressPrinter()
    try:
        result = compare_loras(values, loras, prompts, strength=args.strength, include_base=not args.no_base,
                               out_path=args.out, on_event=printer, stop=stop)
    finally:
        signal.signal(signal.SIGINT, previous)
        printer.close()
    if result.status != "completed":
        print(result.message, file=sys.stderr)
        return 1
    print(result.message)
    return 0
