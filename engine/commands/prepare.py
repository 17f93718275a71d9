"""`fluxlora prepare --instance TOKEN --class WORD --images DIR --repeats N --dest DIR ...`:
the kohya layout, optionally WD14 captions (instance token first) and the preset's folders."""

from __future__ import annotations

from engine.commands import CommandError


def register(subparsers) -> None:
    from engine.commands.tag import add_tagger_source

    parser = subparsers.add_parser("prepare", help="build DEST/img, reg, log, model from a folder of photos")
    parser.add_argument("--instance", required=True, metavar="TOKEN", help="trigger word, e.g. ohwx")
    parser.add_argument("--class", dest="class_word", default="", metavar="WORD", help="what the subject is, e.g. man")
    parser.add_argument("--images", required=True, metavar="DIR")
    parser.add_argument("--repeats", required=True, type=int, metavar="N")
    parser.add_argument("--dest", required=True, metavar="DIR")
    parser.add_argument("--reg-images", default="", metavar="DIR")
    parser.add_argument("--reg-repeats", type=int, default=1, metavar="N")
    parser.add_argument("--tag", action="store_true", help="caption the images with WD14 (instance token first)")
    add_tagger_source(parser, "--tagger-model-dir", "--tagger-repo-id")
    parser.add_argument("--preset", default="", metavar="FILE",
                        help="write train_data_dir, reg_data_dir, output_dir, logging_dir into this preset")
    parser.add_argument("--overwrite", action="store_true",
                        help="rebuild img/ and reg/ of an existing DEST (model/, log/ and its captions are kept)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from pathlib import Path

    from engine.commands.tag import print_rejected
    from engine.console import ProgressPrinter
    from engine.dataset.prepare import apply_copy_info, prepare_from_values
    from engine.preset import default_values

    if args.preset and not Path(args.preset).is_file():
        raise CommandError(f"--preset: {args.preset} not found (create it with `fluxlora preset` first)")
    if args.preset:
        from engine.preset import load_preset

        load_preset(args.preset)  # a broken preset fails before anything is written
    values = dict(default_values(), dataset_instance_prompt=args.instance, dataset_class_prompt=args.class_word,
                  dataset_images_dir=args.images, dataset_repeats=args.repeats, dataset_dest_dir=args.dest,
                  dataset_reg_images_dir=args.reg_images, dataset_reg_repeats=args.reg_repeats,
                  tagger_model_dir=args.model_dir, tagger_repo_id=args.repo_id)
    printer = ProgressPrinter()
    try:
        result, tagged = prepare_from_values(values, tag=args.tag, overwrite=args.overwrite, on_event=printer)
    finally:
        printer.close()
    if args.preset:
        apply_copy_info(args.preset, result.copy_info)
    rejected = result.rejected + (tagged.rejected if tagged else [])
    line = f"copied {result.copied}"
    if tagged is not None:
        line += f", tagged {tagged.tagged}, skipped {tagged.skipped} (already captioned)"
    print(line + f", rejected {len(rejected)}")
    if result.kept_captions:
        print(f"kept {result.kept_captions} caption(s) from the old {args.dest}")
    if result.saved_captions:
        print(f"saved {len(result.saved_captions)} old caption(s) the new layout does not use in "
              f"{Path(result.copy_info['logging_dir']) / 'previous captions'}")
    for key, value in result.copy_info.items():
        print(f"{key} = {value}")
    if args.preset:
        print(f"wrote these into {args.preset}")
    print_rejected(rejected)
    return 1 if rejected else 0
