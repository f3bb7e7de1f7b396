"""The ``mar`` command line: one module per command, one parser, one ``main``.

Each module has ``add_parser(subparsers)`` and ``run(args) -> exit code``; the options
they share, the override syntax and the exit codes are in :mod:`mar.cli.options`.
``python -m mar`` (what ``torchrun -m mar ...`` runs) is the same as ``mar``. Building
the parser imports no torch.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import (
    configs,
    convert,
    data,
    demo,
    eval,
    export,
    extract,
    flops,
    predict,
    recipe,
    serve,
    train,
    visualize,
)
from .options import EXIT_CODES, OK, USAGE

COMMANDS = (train, eval, predict, extract, serve, export, visualize, convert, flops, recipe,
            configs, data, demo)


class _Version(argparse.Action):
    """``--version``: the version, where ``mar`` is imported from, and a warning if another
    distribution installs a ``mar`` command too (worked out only when asked)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from ..distribution import version_text

        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mar", description="MAR: masked autoencoders for efficient action recognition. "
        "`mar COMMAND --help` for a command's options; docs/cli.md lists them all.",
        epilog=EXIT_CODES)
    parser.add_argument("--version", action=_Version,
                        help="print the version and where mar is installed, then exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    for p in sub.choices.values():
        p.epilog = p.epilog or EXIT_CODES
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `key=value` overrides may also follow the options (argparse stops a positional
    # list at the first option)
    positional = "items" if hasattr(args, "items") else "videos" if hasattr(args, "videos") \
        else None
    if extra and positional and all("=" in x and not x.startswith("-") for x in extra):
        setattr(args, positional, getattr(args, positional) + extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except BrokenPipeError:  # `mar configs | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK
    except (ValueError, RuntimeError, OSError) as e:  # ConfigError is a ValueError
        print(f"mar {args.command}: error: {e}", file=sys.stderr)
        return USAGE


if __name__ == "__main__":
    sys.exit(main())
