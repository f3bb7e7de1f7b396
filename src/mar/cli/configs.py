"""``mar configs``: the configs shipped in the package, one line each, or one of them."""

from __future__ import annotations

import argparse

from ..distribution import describe, resolve_config, shipped_configs


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "configs", help="list the shipped configs (any command takes their names)",
        description="The configs shipped in the package, one line each: the name and a "
        "description. Every command that reads a config takes a name as well as a path "
        "(`mar train k400_vit_base_mar50 --out runs/k400_b`). With a NAME, print that "
        "config's YAML (to start your own: `mar configs tiny_cpu > my.yaml`).")
    p.add_argument("name", nargs="?", help="print this shipped config's YAML")
    p.add_argument("--path", action="store_true", help="print file paths instead")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.name is not None:
        path = resolve_config(args.name)
        print(path if args.path else path.read_text(), end="\n" if args.path else "")
        return 0
    shipped = shipped_configs()
    width = max(map(len, shipped))
    for name, path in shipped.items():
        print(f"{name:<{width}}  {path if args.path else describe(path)}")
    return 0
