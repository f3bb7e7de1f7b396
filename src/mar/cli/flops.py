"""``mar flops``: per-view GFLOPs and parameters of a model and its test-time masking."""

from __future__ import annotations

import argparse
import json

from .options import add_reduce, add_set, config_and_overrides


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("flops", help="per-view GFLOPs and parameters of a model + masking",
                       description="Per-view cost of the deploy model (no decoder). "
                       "Examples: `mar flops --set model.name=vit_large --set "
                       "masking.ratio=0.75`, `mar flops --paper`.")
    p.add_argument("items", nargs="*", metavar="[CONFIG] [KEY=VALUE]",
                   help="a YAML config and/or dotted overrides, e.g. model.head=linear")
    add_set(p)
    p.add_argument("--paper", action="store_true",
                   help="reproduce every per-view GFLOPs figure of the paper")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--markdown", action="store_true", help="with --paper: a Markdown table")
    add_reduce(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..flops import PAPER_ROWS, model_cost, paper_row_cost

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
    from ..config import load_config

    path, overrides = config_and_overrides(args)
    cfg = load_config(path, overrides)
    masking = cfg.test_masking()
    model = cfg.model.model_dump()
    if args.reduce:
        from ..flops import reduction_cost

        cost = reduction_cost(model.pop("name"), args.reduce,
                              args.reduce_ratio if args.reduce == "random" else 0.0,
                              args.tome_r, **model)
    else:
        cost = model_cost(model.pop("name"), masking, **model)
    result = {"model": cfg.model.name, "head": cfg.model.head, "reduction": args.reduce}
    if args.reduce == "random":
        result["reduction_ratio"] = args.reduce_ratio      # the fraction of tokens dropped
    elif args.reduce == "tome":
        result["tome_r"] = args.tome_r
    # a reduction replaces the test mask: the model then sees no mask
    result |= {"masking": "none" if args.reduce else masking.name,
               "ratio": 0.0 if args.reduce else masking.ratio,
               "visible_tokens": cost.num_visible,
               "tokens": cost.num_tokens, "gflops": round(cost.gflops, 3),
               "formula_gflops": round(cost.formula_gflops, 3),
               "params_m": round(cost.params / 1e6, 2)}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for key, value in result.items():
            console.print(f"{key:>15}: {'none' if value is None else value}")
    return 0
