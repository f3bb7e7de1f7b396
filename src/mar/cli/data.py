"""``mar data``: prepare lists from official metadata, write the synthetic benchmarks,
check and benchmark video datasets."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
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
    p = dsub.add_parser("shard", help="pack a list's videos into WebDataset tar shards "
                        "(docs/data.md, Sharded datasets)")
    p.add_argument("list")
    p.add_argument("--out", required=True, help="folder for the shards, index.json and "
                   "report.csv (empty, or one a killed run of the same command left)")
    p.add_argument("--root", help="prefix for relative paths in the list")
    p.add_argument("--shard-size", default="1GB",
                   help="bytes per shard, about: 1GB, 500MB, 2000000 (default 1GB)")
    p.add_argument("--seed", type=int, default=0, help="seed of the list's shuffle")
    p.add_argument("--workers", type=int, default=None,
                   help="processes probing videos and writing shards (default: min(4, cores))")
    p.set_defaults(func=cmd_data_shard)
    p = dsub.add_parser("resize", help="re-encode a list's videos once: smaller, a keyframe "
                        "every second (H.264); writes the new list")
    p.add_argument("list")
    p.add_argument("--out", required=True, help="folder for the videos, the new list and "
                   "the report (<list stem>.resize.csv)")
    p.add_argument("--root", help="prefix for relative paths in the list")
    p.add_argument("--short-side", type=int, default=320,
                   help="pixels of the shorter side (smaller videos keep their size)")
    p.add_argument("--keyframe-interval", type=float, default=1.0,
                   help="seconds between keyframes (a clip decodes from the one before it)")
    p.add_argument("--crf", type=int, default=23, help="x264 quality, 0-51 (lower: better)")
    p.add_argument("--preset", default="medium", help="x264 preset (ultrafast ... veryslow)")
    p.add_argument("--workers", type=int, default=None,
                   help="videos converted at once (default: min(4, CPU cores))")
    p.set_defaults(func=cmd_data_resize)


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from ..data.prepare import prepare_dataset

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

    from ..data.check import check_list, write_clean_list, write_report
    from ..data.lists import read_list

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


def cmd_data_resize(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from ..data.resize import ResizeSettings, resize_list
    from .options import INPUTS_FAILED, OK

    settings = ResizeSettings(args.short_side, args.keyframe_interval, args.crf, args.preset)
    with Progress(transient=True) as bar:
        task = bar.add_task("re-encoding videos", total=None)
        run = resize_list(args.list, args.out, args.root, settings, args.workers,
                          lambda done, total: bar.update(task, completed=done, total=total))
    for r in run.results:
        if r.status in ("unreadable", "failed"):
            print(f"{r.status}: {r.source}: {r.note}")
    print(run.summary())
    if run.listed:
        print(f"new list: {run.list_path} ({run.listed} videos; read it with --root "
              f"{args.out} or data.root={args.out}); report: {run.report_path}")
    else:
        print(f"no video converted, no list written; report: {run.report_path}")
    return OK if run.listed and not run.count("failed") else INPUTS_FAILED


def cmd_data_bench(args: argparse.Namespace) -> int:
    from ..data.bench import bench_decode, bench_pipeline
    from ..data.dataset import ClipSampling
    from ..data.decode import available_backends
    from ..data.lists import read_list

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


def cmd_data_synth(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..data.synth import SynthConfig, class_names, synthesize

    cfg = SynthConfig(args.frames, args.size, args.fps, args.per_class_train,
                      args.per_class_val, args.seed, kind=args.kind)
    names = class_names(cfg.kind)
    with tqdm(total=len(names) * (cfg.per_class_train + cfg.per_class_val),
              desc="synthesizing videos") as bar:
        made = synthesize(args.out, cfg, progress=bar.update)
    print(f"{'cached' if made['cached'] else 'wrote'} {args.out}: train.csv, val.csv, "
          f"classes.txt ({len(names)} classes, {cfg.kind}, {cfg.num_frames} x {cfg.size}²)")
    return 0


def cmd_data_shard(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from ..data.shards import parse_size, write_shards

    size = parse_size(args.shard_size)
    with Progress(transient=True) as bar:
        tasks = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.advance(tasks[phase], done)

        report = write_shards(args.list, args.out, root=args.root, shard_size=size,
                              seed=args.seed, workers=args.workers, progress=progress)
    for path, reason in report.unreadable:
        print(f"unreadable: {path}: {reason}")
    kept = report.shards - report.written
    print(f"wrote {report.out}: {report.samples} videos in {report.shards} shards "
          f"({report.bytes / 1e6:.1f} MB{f'; {kept} already complete' if kept else ''}), "
          f"{len(report.unreadable)} unreadable (listed in {report.out / 'report.csv'}); "
          f"index: {report.out / 'index.json'}")
    return 0
