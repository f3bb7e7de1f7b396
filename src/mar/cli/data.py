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
