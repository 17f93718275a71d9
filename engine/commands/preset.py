"""`fluxlora preset validate FILE` and `fluxlora preset import-kohya IN OUT`."""

from __future__ import annotations

import sys

from engine.preset import KOHYA_SS, import_kohya, load_preset


def register(subparsers) -> None:
    parser = subparsers.add_parser("preset", help="check or convert preset files")
    actions = parser.add_subparsers(dest="preset_action", metavar="ACTION", required=True)

    validate = actions.add_parser("validate", help="check a preset; exit 0 when valid")
    validate.add_argument("file")
    validate.set_defaults(handler=run_validate)

    convert = actions.add_parser("import-kohya", help="convert a kohya_ss GUI config to a preset")
    convert.add_argument("source", metavar="IN")
    convert.add_argument("destination", metavar="OUT")
    convert.set_defaults(handler=run_import)


def run_validate(args) -> int:
    result = load_preset(args.file)
    for line in result.report_lines():
        print(f"warning: {line}", file=sys.stderr)
    kind = "kohya_ss config" if result.format == KOHYA_SS else "preset"
    print(f"{args.file}: valid {kind}")
    return 0


def run_import(args) -> int:
    result = import_kohya(args.source, args.destination)
    for line in result.report_lines():
        print(f"note: {line}", file=sys.stderr)
    print(f"wrote {args.destination}")
    return 0
