"""The `mammodino` command line: one subcommand per module in `mammodino.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys

from mammodino import __version__
from mammodino.errors import MammodinoError

# name -> module in mammodino.commands. Each module defines HELP, add_arguments(parser) and
# run(args) -> int, and imports heavy dependencies (torch...) inside run() so --help stays fast.
SUBCOMMANDS = {
    "synth": "synth",
    "prepare": "prepare",
    "inspect": "inspect",
    "pretrain": "pretrain",
    "embed": "embed",
    "eval": "evaluate",
    "labels": "labels",
    "report": "report",
    "export": "export",
    "demo": "demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mammodino",
        description="Self-supervised pretraining of vision transformers for mammography.",
    )
    parser.add_argument("--version", action="version", version=f"mammodino {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(f"mammodino.commands.{module_name}")
        except ModuleNotFoundError as err:
            if err.name != f"mammodino.commands.{module_name}":
                raise
            continue  # subcommand not built yet
        doc = (module.__doc__ or "").strip()
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=doc or module.HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _is_override(text: str) -> bool:
    return "=" in text and not text.startswith("-")


def parse_command_line(
    parser: argparse.ArgumentParser, argv: list[str] | None = None
) -> argparse.Namespace:
    """Parse argv; KEY=VALUE overrides are accepted anywhere after the subcommand.

    argparse binds a `nargs="*"` positional at its first chance, often to nothing before the
    options, and then rejects `--output-dir RUN a.b=1`; such leftovers are appended to
    `overrides` in command-line order, so a later override still wins.
    """
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all(_is_override(e) for e in extra):
            args.overrides = [*(args.overrides or []), *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_command_line(parser, argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except MammodinoError as err:
        print(f"mammodino {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mammodino {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
