"""``mar recipe``: what a config trains with on N processes, against the paper's Table I."""

from __future__ import annotations

import argparse
import json

from ..errors import ConfigError
from ..recipe import DATASET_NAMES  # torch-free
from .options import add_set, split_items


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recipe", help="effective batch, LR, schedule and departures from Table I of a config",
        description="What a config trains with on N processes: per-process batch, "
        "accumulation, repeats, the effective batch, the base and actual LR (the trainer's "
        "rule), warm-up and epochs, steps, and every value that departs from the paper's "
        "Table I. Example: `mar recipe configs/k400_vit_base_mar50.yaml --processes 8`.")
    p.add_argument("items", nargs="+", metavar="CONFIG [KEY=VALUE]",
                   help="one or more YAML configs and dotted overrides (applied to each)")
    add_set(p)
    p.add_argument("--processes", type=int, help="processes (GPUs) to train on "
                   "(default: the config's train.num_gpus, else 1)")
    p.add_argument("--train-size", type=int, help="training videos, for steps per epoch "
                   "(default: the dataset's usual size when it is recognised)")
    p.add_argument("--dataset", choices=list(DATASET_NAMES),
                   help="the dataset, for its Table I column (default: detected)")
    p.add_argument("--json", action="store_true", help="print JSON (a list for several configs)")
    p.add_argument("--markdown", action="store_true",
                   help="a Markdown table of every config given, Table I first")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..recipe import format_recipe, markdown_table, recipe, table_i_markdown

    files, overrides = split_items(args.items)
    overrides += args.set
    if not files:
        raise ConfigError("recipe: give a config file")
    recipes = [recipe(load_config(f, overrides), args.processes, train_size=args.train_size,
                      path=f, dataset=args.dataset) for f in files]
    if args.json:
        data = [r.to_dict() for r in recipes]
        print(json.dumps(data if len(data) > 1 else data[0], indent=1))
    elif args.markdown:
        print(table_i_markdown() + "\n\n" + markdown_table(recipes))
    else:
        print("\n\n".join(format_recipe(r) for r in recipes))
    return 0
