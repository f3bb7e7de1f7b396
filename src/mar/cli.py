"""The ``mar`` command line."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from .config import ConfigError, load_config


def _split_args(items: list[str]) -> tuple[str | None, list[str]]:
    """``[CONFIG] [key=value ...]``: the one item without '=' is the config file."""
    files = [i for i in items if "=" not in i]
    if len(files) > 1:
        raise ConfigError(f"expected at most one config file, got {', '.join(files)}")
    return (files[0] if files else None), [i for i in items if "=" in i]


def cmd_flops(args: argparse.Namespace) -> int:
    from .flops import PAPER_ROWS, model_cost, paper_row_cost

    console = Console()
    if args.paper:
        rows = []
        for row in PAPER_ROWS:
            cost = paper_row_cost(row)
            rows.append({"source": row.source, "setting": row.setting, "paper": row.gflops,
                         "ours": round(cost.gflops, 2),
                         "diff_percent": round(100 * (cost.gflops / row.gflops - 1), 2),
                         "params_m": round(cost.params / 1e6, 1),
                         "paper_params_m": row.params_m})
        if args.json:
            print(json.dumps(rows, indent=1))
            return 0
        if args.markdown:
            print("| source | setting | paper | mar | diff | params M (paper) |")
            print("|---|---|--:|--:|--:|--:|")
            for r in rows:
                paper_params = f" ({r['paper_params_m']:g})" if r["paper_params_m"] else ""
                print(f"| {r['source']} | {r['setting']} | {r['paper']:g} | {r['ours']:.2f} | "
                      f"{r['diff_percent']:+.2f}% | {r['params_m']:.1f}{paper_params} |")
            return 0
        table = Table(title="Per-view GFLOPs: the paper vs. mar (1 clip, 16x224x224 unless noted)")
        for col in ("source", "setting", "paper", "ours", "diff", "params (M)"):
            table.add_column(col, justify="left" if col in ("source", "setting") else "right")
        for r in rows:
            params = f"{r['params_m']:.1f}"
            if r["paper_params_m"]:
                params += f" ({r['paper_params_m']:g})"
            table.add_row(r["source"], r["setting"], f"{r['paper']:g}", f"{r['ours']:.2f}",
                          f"{r['diff_percent']:+.2f}%", params)
        console.print(table)
        console.print("GFLOPs = multiply-accumulates of convolutions, linear layers and "
                      "attention products, plus 5 per element per LayerNorm (fvcore's "
                      "convention, as the paper). Decoder not counted. Params in brackets: "
                      "the paper's.")
        return 0
    path, overrides = _split_args(args.items)
    cfg = load_config(path, overrides)
    masking = cfg.test_masking()
    model = cfg.model.model_dump()
    cost = model_cost(model.pop("name"), masking, **model)
    result = {"model": cfg.model.name, "head": cfg.model.head, "masking": masking.name,
              "ratio": masking.ratio, "visible_tokens": cost.num_visible,
              "tokens": cost.num_tokens, "gflops": round(cost.gflops, 3),
              "formula_gflops": round(cost.formula_gflops, 3),
              "params_m": round(cost.params / 1e6, 2)}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for key, value in result.items():
            console.print(f"{key:>15}: {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mar", description="MAR: masked action recognition")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("flops", help="per-view GFLOPs and parameters of a model + masking",
                       description="Per-view cost of the deploy model (no decoder). "
                       "Examples: `mar flops model.name=vit_large masking.ratio=0.75`, "
                       "`mar flops --paper`.")
    p.add_argument("items", nargs="*", metavar="[CONFIG] [key=value]",
                   help="a YAML config and/or dotted overrides, e.g. model.head=linear")
    p.add_argument("--paper", action="store_true",
                   help="reproduce every per-view GFLOPs figure of the paper")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--markdown", action="store_true", help="with --paper: a Markdown table")
    p.set_defaults(func=cmd_flops)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError) as e:
        print(f"mar {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
