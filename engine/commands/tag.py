"""`fluxlora tag DIR [--model-dir DIR | --repo-id ID] ...`: WD14 captions for a folder of images."""

from __future__ import annotations

import sys

from engine.dataset.tagger import DEFAULT_REPO_ID


def register(subparsers) -> None:
    parser = subparsers.add_parser("tag", help="write WD14 tag captions for the images in a folder")
    parser.add_argument("folder", metavar="DIR")
    add_tagger_source(parser, "--model-dir", "--repo-id")
    parser.add_argument("--general-threshold", type=float, default=0.35, metavar="P")
    parser.add_argument("--character-threshold", type=float, default=0.85, metavar="P")
    parser.add_argument("--add-rating", action="store_true", help="put the most likely rating tag into captions")
    parser.add_argument("--prefix", default="", metavar="TEXT", help="text put first in every caption (trigger word)")
    parser.add_argument("--undesired-tags", default="", metavar="A,B", help="comma-separated tags never written")
    parser.add_argument("--caption-extension", default=".txt", metavar="EXT")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--overwrite", action="store_true", help="replace existing captions (default: skip those images)")
    modes.add_argument("--append", action="store_true", help="add new tags to existing captions")
    parser.add_argument("--recursive", action="store_true", help="also tag images in subfolders")
    parser.add_argument("--batch-size", type=int, default=8, metavar="N")
    parser.set_defaults(handler=run)


def add_tagger_source(parser, dir_flag: str, repo_flag: str) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument(dir_flag, dest="model_dir", default="", metavar="DIR",
                        help="folder with model.onnx and selected_tags.csv (works offline)")
    source.add_argument(repo_flag, dest="repo_id", default=DEFAULT_REPO_ID, metavar="ID",
                        help=f"Hugging Face repo of the tagger (default {DEFAULT_REPO_ID})")


def run(args) -> int:
    from engine.console import ProgressPrinter
    from engine.dataset.tagger import load_wd14, tag_folder

    for name in ("general_threshold", "character_threshold"):
        if not 0 <= getattr(args, name) <= 1:
            raise ValueError(f"--{name.replace('_', '-')}: {getattr(args, name)} is not between 0 and 1")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size: {args.batch_size} is not a positive whole number")
    tagger = load_wd14(args.model_dir or None, args.repo_id)
    mode = "overwrite" if args.overwrite else "append" if args.append else "skip"
    printer = ProgressPrinter()
    try:
        result = tag_folder(tagger, args.folder, general_threshold=args.general_threshold,
                            character_threshold=args.character_threshold, add_rating=args.add_rating,
                            prefix=args.prefix, undesired_tags=args.undesired_tags,
                            caption_extension=args.caption_extension, mode=mode, recursive=args.recursive,
                            batch_size=args.batch_size, on_event=printer)
    finally:
        printer.close()
    print(f"tagged {result.tagged}, skipped {result.skipped} (already captioned), rejected {len(result.rejected)}")
    print_rejected(result.rejected)
    return 1 if result.rejected else 0


def print_rejected(rejected) -> None:
    for path, reason in rejected:
        print(f"  rejected {path}: {reason}", file=sys.stderr)
