"""`fluxlora tag DIR`: WD14 captions for a folder of images."""

from __future__ import annotations

import sys

from engine.commands.train import ProgressPrinter


def register(subparsers) -> None:
    parser = subparsers.add_parser("tag", help="caption images with WD14 tags")
    parser.add_argument("folder", metavar="DIR")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model-dir", metavar="DIR", help="folder with model.onnx and selected_tags.csv")
    source.add_argument("--repo-id", default="SmilingWolf/wd-vit-tagger-v3", metavar="ID")
    parser.add_argument("--general-threshold", type=float, default=0.35)
    parser.add_argument("--character-threshold", type=float, default=0.85)
    parser.add_argument("--add-rating", action="store_true", help="put the rating tag in the caption")
    parser.add_argument("--prefix", default="", metavar="TEXT", help="trigger word written first")
    parser.add_argument("--undesired-tags", default="", metavar="a,b")
    parser.add_argument("--caption-extension", default=".txt")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_const", const="overwrite", dest="mode")
    mode.add_argument("--append", action="store_const", const="append", dest="mode")
    parser.add_argument("--recursive", action="store_true")
    parser.set_defaults(handler=run, mode="skip")


def run(args) -> int:
    from engine.dataset.tagger import load_wd14, tag_folder

    tagger = load_wd14(args.model_dir, args.repo_id)
    printer = ProgressPrinter()
    try:
        result = tag_folder(tagger, args.folder, general_threshold=args.general_threshold,
                            character_threshold=args.character_threshold, add_rating=args.add_rating,
                            prefix=args.prefix, undesired_tags=args.undesired_tags.split(","),
                            caption_extension=args.caption_extension, mode=args.mode, recursive=args.recursive,
                            on_event=printer)
    finally:
        printer.close()
    print(f"tagged {result.tagged}, skipped {result.skipped} that already had captions")
    for name, reason in result.rejected:
        print(f"rejected {name}: {reason}", file=sys.stderr)
    return 1 if result.rejected else 0
