"""`fluxlora fix-state STATE_DIR [--preset FILE | --steps-per-epoch N] [--step N] [--dry-run]`."""

from __future__ import annotations

from engine.train_state import fix_train_state


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "fix-state", help="make a kohya_ss state's current_step cumulative again",
        description="kohya's train_state.json counts only the steps of the run that wrote it; this writes the "
                    "true step (the original is kept as train_state.json.bak). A folder repaired once is left alone.")
    parser.add_argument("state_dir", metavar="STATE_DIR")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", metavar="FILE",
                        help="compute steps per epoch from this preset's dataset")
    source.add_argument("--steps-per-epoch", type=int, metavar="N")
    parser.add_argument("--step", type=int, metavar="N",
                        help="the true step, when the file cannot tell (the command says so)")
    parser.add_argument("--dry-run", action="store_true", help="show the change, write nothing")
    parser.set_defaults(handler=run)


def run(args) -> int:
    steps_per_epoch = args.steps_per_epoch
    if args.preset:
        from engine.preset import load_preset
        from engine.training.data import steps_per_epoch_for

        steps_per_epoch = steps_per_epoch_for(load_preset(args.preset).values)
    report = fix_train_state(args.state_dir, steps_per_epoch, dry_run=args.dry_run, step=args.step)
    prefix = "would change " if args.dry_run and report.changed else ""
    print(prefix + report.summary())
    if report.changed and not args.dry_run:
        print("the original is kept as train_state.json.bak")
    return 0
