"""The ``mar`` command line."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from .errors import ConfigError

REDUCTIONS = ("random", "tome", "rlt", "rlt+mar")


def _add_reduce_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reduce", choices=REDUCTIONS,
                   help="training-free token reduction at test time, instead of the test "
                   "mask (docs/token_reduction.md)")
    p.add_argument("--reduce-ratio", type=float, default=0.5,
                   help="random: fraction of tokens dropped; rlt+mar: the cell running "
                   "ratio (default: %(default)s)")
    p.add_argument("--tome-r", type=int, default=8,
                   help="tome: tokens merged in each encoder block (default: %(default)s)")
    p.add_argument("--rlt-threshold", type=float, default=0.1,
                   help="rlt: drop a tubelet whose mean absolute change from the previous "
                   "one, in normalised pixels, is below this (default: %(default)s)")


def _reduced(model, args):
    """The model wrapped in ``--reduce``'s token reduction, and the masking to run it with
    (none: the reduction chooses the tokens)."""
    from .masking import make_masking
    from .models.token_reduction import TokenReduction

    reducer = TokenReduction(model, args.reduce, ratio=args.reduce_ratio, tome_r=args.tome_r,
                             rlt_threshold=args.rlt_threshold).eval()
    return reducer, make_masking("none")


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
    from .config import load_config

    path, overrides = _split_args(args.items)
    cfg = load_config(path, overrides)
    masking = cfg.test_masking()
    model = cfg.model.model_dump()
    if args.reduce:
        from .flops import reduction_cost

        cost = reduction_cost(model.pop("name"), args.reduce,
                              args.reduce_ratio if args.reduce == "random" else 0.0,
                              args.tome_r, **model)
    else:
        cost = model_cost(model.pop("name"), masking, **model)
    result = {"model": cfg.model.name, "head": cfg.model.head, "reduction": args.reduce,
              "masking": masking.name,
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


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from .data.prepare import prepare_dataset

    reports = prepare_dataset(args.dataset, args.annotations, args.videos, args.out, args.split)
    for name, r in reports.items():
        line = f"{name}: {r.found} of {r.listed} videos found"
        if r.missing:
            line += f"; {len(r.missing)} missing, listed in {args.out}/missing_{name}.txt"
        print(line)
    print(f"wrote {args.out}/classes.txt and the lists {', '.join(f'{n}.csv' for n in reports)}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from .data.check import check_list, write_clean_list, write_report
    from .data.lists import read_list

    records = read_list(args.list, args.root)
    with Progress(transient=True) as bar:
        task = bar.add_task("checking videos", total=len(records))
        results = check_list(records, args.workers, args.min_frames, args.timeout,
                             progress=lambda: bar.advance(task))
    report = args.report or f"{args.list}.check.csv"
    write_report(results, report)
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "suspicious", "unreadable")}
    for r in results:
        if r.status != "ok":
            print(f"{r.status}: {r.path}: {r.note}")
    print(f"{len(results)} videos: {counts['ok']} ok, {counts['suspicious']} suspicious, "
          f"{counts['unreadable']} unreadable; report: {report}")
    if args.clean_list:
        n = write_clean_list(results, args.clean_list, keep_suspicious=not args.drop_suspicious)
        print(f"wrote {n} videos to {args.clean_list}")
    return 0


def cmd_data_bench(args: argparse.Namespace) -> int:
    from .data.bench import bench_decode, bench_pipeline
    from .data.dataset import ClipSampling
    from .data.decode import available_backends
    from .data.lists import read_list

    records = read_list(args.list, args.root)
    sampling = ClipSampling(args.sampling, args.num_frames, args.stride)
    backends = available_backends() if args.backend == "all" else [args.backend]
    print(f"{len(records)} videos, clips of {args.num_frames} frames ({args.sampling}), "
          f"{args.crop_size}x{args.crop_size} crops, {args.clips} clips per figure")
    print("| backend | what | workers | clips/s |")
    print("|---|---|--:|--:|")
    for backend in backends:
        rate = bench_decode(records, backend, args.clips, sampling)
        print(f"| {backend} | decode only | 1 | {rate:.1f} |", flush=True)
        for workers in args.workers:
            rate = bench_pipeline(records, backend, args.clips, workers, sampling,
                                  args.crop_size)
            print(f"| {backend} | decode + train augmentation | {workers} | {rate:.1f} |",
                  flush=True)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .engine.trainer import train

    path, overrides = _split_args(args.items)
    if args.command == "pretrain":
        overrides = ["train.task=pretrain", *overrides]
    cfg = load_config(path, overrides)
    if args.command == "train" and cfg.train.task == "pretrain":
        raise ConfigError("train.task is 'pretrain': run `mar pretrain` for pretraining")
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    train(cfg, args.out, resume=args.resume == "auto", overwrite=args.overwrite)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .engine.distributed import init_distributed
    from .engine.evaluate import print_summary, run_eval
    from .inference import describe_masking, load_run

    path, overrides = _split_args(args.items)
    model, cfg = load_run(args.checkpoint, path, overrides)
    info = init_distributed(cfg.train.device)
    model.to(info.device)
    out = Path(args.out) if args.out else None
    if out is not None and info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    masking = None
    if args.reduce:
        model, masking = _reduced(model, args)
    if info.is_main:
        print(model.describe() if args.reduce else
              describe_masking(cfg.test_masking(), model.grid))
    result = run_eval(cfg, model, args.split, info, out_dir=out, masking=masking)
    summary = result.summary()
    if args.reduce:
        from .flops import reduction_flops

        summary |= {"reduction": model.describe(),
                    "mean_tokens": round(model.mean_kept_tokens(), 2),
                    "gflops_per_view": round(reduction_flops(model) / 1e9, 4)}
    if info.is_main:
        print_summary(summary)
        if out is not None:
            (out / "eval.json").write_text(json.dumps(summary, indent=1))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import time

    begin = time.perf_counter()
    from .inference import (
        Profile,
        bf16_note,
        describe_masking,
        eval_masking,
        find_videos,
        load_run,
        predict,
    )

    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    model, cfg = load_run(args.checkpoint, args.config, args.set)
    startup = time.perf_counter() - begin
    masking = eval_masking(cfg, args.mask_ratio)
    if args.reduce:
        model, masking = _reduced(model, args)
        print(model.describe(), file=sys.stderr)
    else:
        print(describe_masking(masking, model.grid), file=sys.stderr)
    names = None
    if args.class_names or cfg.data.class_names:
        from .data import read_class_names

        names = read_class_names(args.class_names or cfg.data.class_names)
    videos = find_videos(args.videos)
    if note := bf16_note(args.dtype, next(model.parameters()).device):
        print(f"mar predict: {note}", file=sys.stderr)

    def label(c: int) -> str:
        return names[c] if names and c < len(names) else str(c)

    if args.render and not args.out:
        raise ConfigError("--render needs --out")
    if args.window is not None:
        return _predict_timelines(args, model, cfg, videos, masking, label)
    elif args.stride is not None or args.render or args.smooth != 1 or args.out:
        raise ConfigError("--stride, --smooth, --out and --render need --window")
    profile = Profile() if args.profile else None
    results = predict(model, cfg, videos, masking, args.topk, batch_size=args.batch_size,
                      workers=args.workers, dtype=args.dtype, profile=profile)
    if profile is not None:
        _print_profile(profile, startup)

    if args.json:
        print(json.dumps([{"video": r.path, "views": r.views, "error": r.error,
                           "top": [{"class": c, "name": label(c), "prob": round(p, 5)}
                                   for c, p in zip(r.classes, r.probs, strict=True)]}
                          for r in results], indent=1))
    else:
        table = Table(title=f"top-{args.topk} ({cfg.data.test_clips} x {cfg.data.test_crops} "
                      "views per video)")
        table.add_column("video")
        table.add_column("prediction")
        for r in results:
            text = r.error or ", ".join(f"{label(c)} {p:.1%}"
                                        for c, p in zip(r.classes, r.probs, strict=True))
            table.add_row(r.path, text)
        Console().print(table)
        for r in results:  # one line each on stderr, whatever the table's wrapping did
            if r.error is not None:
                print(f"mar predict: {r.error}", file=sys.stderr)
    return 0 if all(r.error is None for r in results) else 1


def _predict_timelines(args, model, cfg, videos, masking, label) -> int:
    """``mar predict --window``: a timeline per video (JSON/CSV/PNG/MP4 in ``--out``)."""
    from .data import DecodeError
    from .inference import autocast_dtype
    from .timeline import predict_timeline, write_timeline

    dtype = autocast_dtype(args.dtype, next(model.parameters()).device)
    results, failed = [], 0
    for video in videos:
        try:
            tl = predict_timeline(model, cfg, video, masking, args.window,
                                  args.stride or args.window, batch_size=args.batch_size,
                                  smooth=args.smooth, dtype=dtype)
        except DecodeError as e:
            failed += 1
            print(f"mar predict: {e}", file=sys.stderr)
            results.append({"video": str(video), "error": str(e)})
            continue
        results.append(tl.to_json(args.topk, label))
        if args.out:
            files = write_timeline(tl, args.out, args.topk, label, render=args.render)
            print(f"wrote {', '.join(str(f) for f in files)}", file=sys.stderr)
        if not args.json:
            table = Table(title=f"{video}: {len(tl.starts)} windows of {tl.window:g} s every "
                          f"{tl.stride:g} s ({tl.seconds:.1f} s)")
            for col in ("from s", "to s", "top-1", "mean prob"):
                table.add_column(col, justify="left" if col == "top-1" else "right")
            for start, end, c, p in tl.segments():
                table.add_row(f"{start:.1f}", f"{end:.1f}", label(c), f"{p:.1%}")
            Console().print(table)
    if args.json:
        print(json.dumps(results, indent=1))
    return 1 if failed else 0


def _print_profile(p, startup: float) -> None:
    """``mar predict --profile``: seconds per stage, on stderr."""
    table = Table(title=f"mar predict --profile: {p.videos} videos, {p.views} views")
    for col in ("stage", "seconds", "per video ms"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    rows = [("start-up (imports, model load)", startup), ("open + probe", p.open),
            ("decode + scale", p.decode), ("crop + normalise", p.transform),
            ("model", p.model), ("predict wall time", p.wall)]
    for name, sec in rows:
        table.add_row(name, f"{sec:.3f}", f"{1000 * sec / max(p.videos, 1):.1f}")
    Console(stderr=True).print(table)
    print("open, decode and crop are summed over the loader workers: with --workers > 0 "
          "they overlap the model", file=sys.stderr)


def cmd_export(args: argparse.Namespace) -> int:
    from .inference import describe_masking, eval_masking, export_onnx, load_run

    model, cfg = load_run(args.checkpoint, args.config, args.set)
    masking = eval_masking(cfg, args.mask_ratio)
    print(describe_masking(masking, model.grid))
    path = export_onnx(model, masking, args.out, args.opset)
    mask = masking(1, model.grid, train=False)
    print(f"wrote {path}: input 'video' (batch, 3, {cfg.model.num_frames}, "
          f"{cfg.model.img_size}, {cfg.model.img_size}) normalised with mean "
          f"{cfg.model.pixel_mean} and std {cfg.model.pixel_std}; output 'logits' "
          f"(batch, {cfg.model.num_classes}); {mask.num_visible} of {mask.num_tokens} tokens "
          "visible")
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .masking import make_masking
    from .visualize import mask_picture, reconstruct, reconstruction_figure

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.masks:
        grid = tuple(args.grid)
        strategies = {n: make_masking(n, args.mask_ratio if args.mask_ratio is not None
                                      else 0.5) for n in args.masks}
        path = mask_picture(strategies, grid, out / "masks.png", train=args.train_masks,
                            seed=args.seed)
        print(f"wrote {path}")
    if args.video:
        from .data import VideoRecord
        from .inference import describe_masking, eval_masking, load_run

        if not args.checkpoint:
            raise ValueError("--checkpoint is needed to reconstruct a video")
        model, cfg = load_run(args.checkpoint, args.config, args.set)
        item = cfg.eval_dataset([VideoRecord(args.video, 0)], 1, 1)[0]
        if not item["valid"]:
            raise ValueError(f"{args.video}: could not be decoded")
        masking = eval_masking(cfg, args.mask_ratio)
        print(describe_masking(masking, model.grid))
        mask = masking(1, model.grid, train=False)
        clips = reconstruct(model, item["video"][None], mask)
        for path in reconstruction_figure(*clips, out / "reconstruction.png",
                                          out / "reconstruction.mp4"):
            print(f"wrote {path}")
    if not args.masks and not args.video:
        raise ValueError("nothing to draw: give a VIDEO (with --checkpoint) and/or --masks")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import FULL, DemoConfig, run_demo

    budget = {k: getattr(args, k) if getattr(args, k) is not None
              else FULL[k] if args.full else getattr(DemoConfig, k) for k in FULL}
    run_demo(DemoConfig(out=args.out, data=args.data, kind=args.kind, model=args.model,
                        size=args.size, num_frames=args.frames, patch_size=args.patch_size,
                        per_class_train=args.per_class, per_class_val=args.per_class_val,
                        batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                        workers=args.workers, norm_target=args.norm_target, **budget))
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from .data.synth import SynthConfig, class_names, synthesize

    cfg = SynthConfig(args.frames, args.size, args.fps, args.per_class_train,
                      args.per_class_val, args.seed, kind=args.kind)
    names = class_names(cfg.kind)
    with tqdm(total=len(names) * (cfg.per_class_train + cfg.per_class_val),
              desc="synthesizing videos") as bar:
        made = synthesize(args.out, cfg, progress=bar.update)
    print(f"{'cached' if made['cached'] else 'wrote'} {args.out}: train.csv, val.csv, "
          f"classes.txt ({len(names)} classes, {cfg.kind}, {cfg.num_frames} x {cfg.size}²)")
    return 0


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("items", nargs="*", metavar="CONFIG [key=value]",
                   help="a YAML config and dotted overrides, e.g. train.epochs=10")
    p.add_argument("--out", required=True, help="the run directory")
    p.add_argument("--resume", choices=["auto", "no"], default="no",
                   help="auto: continue from the latest checkpoint in --out")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in a non-empty --out (deletes its checkpoints)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config")
    p.set_defaults(func=cmd_train)


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
    _add_reduce_args(p)
    p.set_defaults(func=cmd_flops)

    from .convert.cli import add_parser as add_convert_parser

    add_convert_parser(sub)
    from .recipe import add_parser as add_recipe_parser

    add_recipe_parser(sub)
    from .extract_cli import add_parser as add_extract_parser

    add_extract_parser(sub)
    from .serve.cli import add_parser as add_serve_parser

    add_serve_parser(sub)
    _add_run_args(sub.add_parser("train", help="fine-tune (MAR or standard training)"))
    _add_run_args(sub.add_parser("pretrain", help="self-supervised VideoMAE-style pretraining"))
    p = sub.add_parser("eval", help="evaluate a checkpoint (multi-view test by default)")
    p.add_argument("items", nargs="*", metavar="CONFIG [key=value]")
    p.add_argument("--checkpoint", required=True, help="a checkpoint or model directory")
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--out", help="write eval.json, confusion.csv/png, per_class.json here")
    _add_reduce_args(p)
    p.set_defaults(func=cmd_eval)

    from .demo import FULL, DemoConfig

    d = DemoConfig()
    p = sub.add_parser("demo", help="pretraining, then MAR vs standard training, on "
                       "synthetic videos, on a CPU")
    p.add_argument("--out", default=d.out, help="output folder (default: %(default)s)")
    p.add_argument("--data", help="where the synthetic videos are cached (default: OUT/data)")
    p.add_argument("--kind", choices=("natural", "shapes"), default=d.kind,
                   help="the benchmark: motion over photographs, or drawn shapes "
                   "(default: %(default)s)")
    p.add_argument("--model", default=d.model)
    p.add_argument("--size", type=int, default=d.size, help="frame size in pixels")
    p.add_argument("--frames", type=int, default=d.num_frames)
    p.add_argument("--patch-size", type=int, default=d.patch_size)
    p.add_argument("--per-class", type=int, default=d.per_class_train,
                   help="training videos per class")
    p.add_argument("--per-class-val", type=int, default=d.per_class_val)
    p.add_argument("--pretrain-epochs", type=int, default=None,
                   help=f"`mar pretrain` epochs before fine-tuning, 0: from random weights "
                   f"(default: {d.pretrain_epochs}, --full: {FULL['pretrain_epochs']})")
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs of each "
                   f"arm (default: {d.epochs}, --full: {FULL['epochs']})")
    p.add_argument("--norm-target", action="store_true",
                   help="pretrain on VideoMAE's per-patch normalised pixels (default: raw "
                   "pixels, the target that learns on this benchmark: docs/results.md)")
    p.add_argument("--full", action="store_true",
                   help="the longer run: one seed of the study's Fig. 1 budget")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=d.workers, help="data loader workers")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("predict", help="top-k classes of video files")
    p.add_argument("videos", nargs="+", help="video files and/or folders of videos")
    p.add_argument("--checkpoint", required=True, help="a checkpoint or model directory")
    p.add_argument("--config", help="the run's config (default: found beside the weights)")
    p.add_argument("--class-names", help="class-name file (default: data.class_names)")
    p.add_argument("--mask-ratio", type=float, help="cell running at this ratio "
                   "(default: the config's test mask)")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set data.test_clips=2")
    p.add_argument("--json", action="store_true")
    p.add_argument("--batch-size", type=int, help="views per model call (default: 4 on a "
                   "CPU, 16 on a GPU)")
    p.add_argument("--workers", type=int, help="decoding processes (default: none for one "
                   "video, else up to 4, one per spare core)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: autocast on CUDA or a CPU with bf16 kernels")
    p.add_argument("--profile", action="store_true", help="print seconds per stage")
    _add_reduce_args(p)
    p.add_argument("--window", type=float, metavar="S",
                   help="long videos: one prediction per window of S seconds (a timeline)")
    p.add_argument("--stride", type=float, metavar="S",
                   help="with --window: seconds between window starts (default: --window)")
    p.add_argument("--smooth", type=int, default=1, metavar="K",
                   help="with --window: average probabilities over K neighbouring windows")
    p.add_argument("--out", help="with --window: write <video>.timeline.json/.csv/.png here")
    p.add_argument("--render", action="store_true",
                   help="with --window and --out: also <video>.timeline.mp4, labels drawn on")
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("export", help="export the masked inference path (ONNX)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--config")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--mask-ratio", type=float)
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("visualize", help="masks (Fig. 3-4) and reconstructions (Fig. 6)")
    p.add_argument("video", nargs="?", help="a video to reconstruct (needs --checkpoint)")
    p.add_argument("--checkpoint")
    p.add_argument("--config")
    p.add_argument("--mask-ratio", type=float)
    p.add_argument("--masks", nargs="+", metavar="STRATEGY",
                   help="draw these masking strategies, e.g. cell_running tube random")
    p.add_argument("--grid", type=int, nargs=3, default=[8, 14, 14], metavar=("T", "H", "W"))
    p.add_argument("--train-masks", action="store_true",
                   help="draw training masks (random start states, shuffles) instead of eval")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_visualize)

    data = sub.add_parser("data", help="prepare, check and benchmark video datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)
    p = dsub.add_parser("prepare", help="list files + class names from official metadata")
    p.add_argument("dataset", choices=["kinetics", "ssv2", "ucf101", "hmdb51"])
    p.add_argument("--annotations", required=True, help="folder of the official metadata")
    p.add_argument("--videos", required=True, help="folder holding the videos (searched)")
    p.add_argument("--out", required=True, help="where to write the lists")
    p.add_argument("--split", type=int, default=1, help="UCF101/HMDB51 split (1-3)")
    p.set_defaults(func=cmd_data_prepare)
    p = dsub.add_parser("synth", help="write the synthetic action benchmark (H.264 + lists)")
    p.add_argument("out")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--kind", choices=["shapes", "natural"], default="shapes",
                   help="shapes: drawn shapes over noisy backgrounds; natural: camera and "
                   "object motion over real photographs (docs/natural_benchmark.md)")
    p.add_argument("--size", type=int, default=None,
                   help="frame size (default: 64 for shapes, 112 for natural)")
    p.add_argument("--fps", type=int, default=12)
    p.add_argument("--per-class-train", type=int, default=40)
    p.add_argument("--per-class-val", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_data_synth)
    p = dsub.add_parser("check", help="decode every video of a list; report bad files")
    p.add_argument("list")
    p.add_argument("--root", help="prefix for relative paths in the list")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--min-frames", type=int, default=16,
                   help="fewer decodable frames than this is suspicious")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per video")
    p.add_argument("--report", help="CSV report path (default: LIST.check.csv)")
    p.add_argument("--clean-list", help="write the list without unreadable videos here")
    p.add_argument("--drop-suspicious", action="store_true",
                   help="with --clean-list: also drop suspicious videos")
    p.set_defaults(func=cmd_data_check)
    p = dsub.add_parser("bench", help="clips/s of decoding and of the training pipeline")
    p.add_argument("list")
    p.add_argument("--root")
    p.add_argument("--backend", default="all", help="pyav, torchcodec or all (installed)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--clips", type=int, default=40)
    p.add_argument("--sampling", choices=["dense", "segment"], default="dense")
    p.add_argument("--num-frames", type=int, default=16)
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--crop-size", type=int, default=224)
    p.set_defaults(func=cmd_data_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `key=value` overrides may also follow the options (argparse stops a positional
    # list at the first option)
    if extra and hasattr(args, "items") and all("=" in x and not x.startswith("-")
                                                for x in extra):
        args.items += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except (ValueError, RuntimeError, OSError) as e:  # ConfigError is a ValueError
        print(f"mar {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
