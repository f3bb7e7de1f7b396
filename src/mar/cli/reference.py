"""docs/cli.md, made from the parser: every command and option, so the page cannot drift.

``python -m mar.cli.reference > docs/cli.md`` writes it; a test fails when it is stale.
"""

from __future__ import annotations

import argparse
import sys

from . import build_parser
from .options import EXIT_CODES

HEADER = """# Command-line reference

Generated from the parser by `python -m mar.cli.reference > docs/cli.md`; a test fails
when this page and the parser differ. `mar COMMAND --help` prints the same.

- One grammar: `--checkpoint`, `--config`, `--set KEY=VALUE` (repeatable; a bare
  `KEY=VALUE` item is the same), `--device auto|cpu|cuda[:N]` and `--amp none|bf16|fp16`
  mean the same on every command that has them.
- `python -m mar` is `mar`; under torchrun: `torchrun --nproc_per_node N -m mar train ...`.
- {exit_codes}.
"""


def _flags(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    names = ", ".join(f"`{o}`" for o in action.option_strings)
    if action.nargs == 0:
        return names
    metavar = action.metavar or (
        "{" + ",".join(map(str, action.choices)) + "}" if action.choices else
        action.dest.upper())
    if isinstance(metavar, tuple):
        metavar = " ".join(metavar)
    return f"{names} `{metavar}`"


def _help(action: argparse.Action) -> str:
    text = (action.help or "").replace("%(default)s", str(action.default))
    if action.required and action.option_strings:
        text = f"**required**. {text}"
    return text.replace("|", "\\|").replace("\n", " ")


def _command(name: str, parser: argparse.ArgumentParser) -> list[str]:
    lines = [f"## `mar {name}`", ""]
    if parser.description:
        lines += [parser.description, ""]
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    rows = [a for a in parser._actions
            if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)]
    if rows:
        lines += ["| argument | what |", "|---|---|"]
        lines += [f"| {_flags(a).replace('|', chr(92) + '|')} | {_help(a)} |" for a in rows]
        lines.append("")
    for sub in subs:
        for child, p in sub.choices.items():
            lines += _command(f"{name} {child}", p)
    return lines


def markdown() -> str:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    lines = [HEADER.format(exit_codes=EXIT_CODES[0].upper() + EXIT_CODES[1:]), "## Commands",
             ""]
    lines += [f"- [`mar {name}`](#mar-{name}): {choice.help}"
              for choice, name in ((a, a.dest) for a in sub._choices_actions)]
    lines.append("")
    for name, p in sub.choices.items():
        lines += _command(name, p)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
