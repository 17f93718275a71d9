"""`fluxlora prepare`: photo folder -> kohya layout (-> WD14 captions) (-> preset folders)."""

from __future__ import annotations

import sys

from engine.commands.train import ProgressPrinter


def register(subparsers) -> None:
    parser = subparsers.add_parser("prepare", help="build the img/reg/log/model layout from a photo folder")
    parser.add_argument("--instance", required=True, metavar="TOKEN", help="trigger word, e.g. ohwx")
    parser.add_argument("--class", dest="class_word", default="", metavar="WORD", help="class word, e.g. man")
    parser.add_argument("--images", required=True, metavar="DIR")
    parser.add_argument("--repeats", type=int, default=10, metavar="N")
    parser.add_argument("--dest", required=True, metavar="DIR")
    parser.add_argument("--reg-images", metavar="DIR")
    parser.add_argument("--reg-repeats", type=int, default=1, metavar="N")
    parser.add_argument("--overwrite", action="store_true", help="rebuild an existing DEST (captions, log/ and model/ kept)")
    parser.add_argument("--tag", action="store_true", help="caption the images with WD14 tags (trigger word first)")
    parser.add_argument("--tagger-model-dir", metavar="DIR", help="folder with model.onnx and selected_tags.csv")
    parser.add_argument("--tagger-repo-id", default="SmilingWolf/wd-vit-tagger-v3", metavar="ID")
    parser.add_argument("--preset", metavar="FILE", help="write the four folders into this preset")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from engine.dataset.prepare import apply_copy_info, prepare_dataset

    printer = ProgressPrinter()
    try:
        result = prepare_dataset(args.instance, args.class_word, args.images, args.repeats, args.dest,
                                 args.reg_images, args.reg_repeats, overwrite=args.overwrite, on_event=printer)
        printer.close()
        print(f"copied {result.copied} images to {result.image_folder}")
        if result.kept_captions:
            print(f"kept {result.kept_captions} captions from the previous {args.dest}")
        rejected = list(result.rejected)
        if args.tag:
            from engine.dataset.tagger import load_wd14, tag_folder

            tagger = load_wd14(args.tagger_model_dir, args.tagger_repo_id)
            tagged = tag_folder(tagger, result.image_folder, prefix=args.instance, on_event=printer)
            printer.close()
            print(f"tagged {tagged.tagged}, skipped {tagged.skipped} that already had captions")
            rejected += tagged.rejected
    finally:
        printer.close()
    for name, reason in rejected:
        print(f"rejected {name}: {reason}", file=sys.stderr)
    if args.preset:
        apply_copy_info(args.preset, result.copy_info)
        print(f"wrote the folders into {args.preset}")
    for key, value in result.copy_info.items():
        print(f"{key} = {value}")
    return 1 if rejected else 0
