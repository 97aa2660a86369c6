"""The ``clipsift`` command line: core commands plus groups registered by entry points.

A package adds a command group by declaring, in its pyproject.toml::

    [project.entry-points."clipsift.commands"]
    mygroup = "mypackage.cli:register"

where ``register(subparsers)`` adds parsers to ``subparsers`` (an argparse sub-parsers action) and
sets ``func=handler`` on each through ``set_defaults``; ``handler(args) -> int`` returns the exit
code. User errors raise :class:`clipsift.errors.ClipsiftError`; the CLI prints its one line on stderr
and exits 1. Usage errors exit 2 (argparse).
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

from clipsift import __version__
from clipsift.errors import ClipsiftError
from clipsift.log import configure_logging, get_logger

log = get_logger("cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipsift",
        description="DataComp-compatible data filtering for CLIP pretraining.",
    )
    parser.add_argument("--version", action="version", version=f"clipsift {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only, no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from clipsift import commands

    commands.register(sub)
    for ep in sorted(entry_points(group="clipsift.commands"), key=lambda e: e.name):
        try:
            register = ep.load()
        except Exception as exc:  # a broken plugin must not take the whole CLI down
            log.warning("command plugin %s could not be loaded: %s", ep.name, exc)
            continue
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(-1 if args.quiet else args.verbose)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except ClipsiftError as exc:
        print(f"clipsift: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("clipsift: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
