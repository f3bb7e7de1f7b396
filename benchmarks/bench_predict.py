"""End-to-end prediction on real video files: mar (MAR 50 % and full tokens) against the
transformers way a user writes it from the VideoMAE model card.

Every arm goes from video files to class probabilities, one view per video (16 frames
at stride 4 from the middle, the short side resized to 224, the centre 224x224 crop),
with the model already loaded; the arms run interleaved, and the table gives medians of
the repeats. The models hold the same random weights: a transformers
``VideoMAEForVideoClassification`` converted by ``mar.convert`` (the MAR arm tests the same
weights with the cell running 50 % mask). The transformers way decodes with PyAV the
frames the same indices name (iterating the stream, as the model card's
``read_video_pyav``), prepares them with ``VideoMAEImageProcessor`` and runs the model;
the report gives the top-1 agreement of the full-token arms on these identical views.

The deployment arms (``--arms``, all by default) run the same ``predict`` on what
``--runtime auto`` chooses for each model (``runtimes``: the fastest installed runtime in
float32, full tokens and MAR 50 %, measured once per shape as ``mar predict`` does;
``int8``: the faster int8 runtime, MAR 50 %), and the full-token runtime arm with its
decoding not overlapped with the model (``overlap``: ``--workers 0`` against ``predict``'s
default loader workers, which decode the next videos while the model runs). The goals of
the deployment issue (full tokens >= 1.5x the transformers way, MAR 50 % >= 3x, MAR 50 %
int8 >= 5x) are printed beside them, with the CPU's instruction sets, and the model-only
int8 against float32 from auto's measurements. ``--arms torch`` runs only the torch arms
(with ``transformers`` always).

``--bf16`` adds the same arms in bf16 (``mar predict --amp bf16``; the transformers way
under ``torch.autocast("cpu", torch.bfloat16)``, which is what its user would write) and
reports how far bf16 moves the probabilities from fp32: the precision is a user's choice,
so the speed-ups are given at equal precision as well as against the model card's fp32.

Videos: the test videos of ``tests/data/videos``, plus longer ones made by concatenating
them (written once into ``--work``). Start-up (``mar predict`` as a command, imports and model load
included) is measured on its own.

    python benchmarks/bench_predict.py --repeats 3 [--bf16]
    python benchmarks/bench_predict.py --repeats 1 --long 1 --arms runtimes int8   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_runtime import instruction_sets, versions

from mar.runtime.device import cpu_name

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT / "tests" / "data" / "videos"       # the test videos (their README)
ARMS = ("torch", "runtimes", "int8", "overlap")
GOALS = {"full tokens, best runtime": 1.5, "MAR 50 %, best runtime": 3.0,
         "MAR 50 %, int8": 5.0}                   # x the transformers way, fp32


def long_videos(work: Path, count: int, seconds: float) -> list[Path]:
    """``count`` videos of about ``seconds`` each at 25 fps, 640x360, made by chaining
    the test clips (resized) end to end; written once."""
    import av

    from mar.data.video_writer import write_video

    sources = sorted(p for p in VIDEOS.glob("*") if p.suffix in (".mp4", ".avi")
                     and "bugy" not in p.name)
    out = []
    for k in range(count):
        path = work / f"long_{k}_{seconds:g}s.mp4"
        out.append(path)
        if path.is_file():
            continue
        frames = []
        while len(frames) < seconds * 25:
            src = sources[(k + len(frames)) % len(sources)]
            with av.open(str(src)) as c:
                for f in c.decode(video=0):
                    frames.append(f.to_ndarray(format="rgb24", width=640, height=360))
        write_video(path, np.stack(frames[: int(seconds * 25)]), fps=25)
    return out


def setup(work: Path, tiny: bool):
    """A random transformers classifier saved to ``work``, and mar model directories of
    the same weights: full tokens, and MAR 50 %."""
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification

    from mar.convert import convert_checkpoint, save_model

    size = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=256) if tiny else {}
    torch.manual_seed(0)
    hf = VideoMAEForVideoClassification(VideoMAEConfig(num_labels=400, **size,
                                                       attn_implementation="sdpa")).eval()
    hf_dir = work / ("hf-tiny" if tiny else "hf")
    hf.save_pretrained(hf_dir)
    dirs = {}
    for name, masking in (("full", {"name": "none", "ratio": 0.0}),
                          ("mar50", {"name": "cell_running", "ratio": 0.5})):
        model, report = convert_checkpoint(hf_dir)
        dirs[name] = save_model(model, report.config, work / f"mar-{name}{'-tiny' * tiny}",
                                masking=masking, overwrite=True)
    return hf, hf_dir, dirs


def top5(result) -> dict[int, float]:
    """class -> probability of the five most likely classes, from either kind of arm."""
    if isinstance(result, np.ndarray):
        order = np.argsort(result)[::-1][:5]
        return {int(c): float(result[c]) for c in order}
    return dict(zip(result.classes[:5], result.probs[:5], strict=True))


SETTINGS = ["data.sampling=dense", "data.stride=4", "data.test_clips=1", "data.test_crops=1",
            "data.num_frames=16"]


def transformers_way(hf, processor, videos: list[Path], indices_of,
                     bf16: bool = False) -> list[np.ndarray]:
    """The model card's way: decode the sampled frames with PyAV, process, classify."""
    import av

    out = []
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        for path in videos:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                total = sum(1 for _ in container.demux(stream) if _.size)
            indices = indices_of(total)
            wanted, frames = set(indices), {}
            with av.open(str(path)) as container:
                for i, frame in enumerate(container.decode(video=0)):
                    if i > max(indices):
                        break
                    if i in wanted:
                        frames[i] = frame.to_ndarray(format="rgb24")
            clip = [frames.get(i, frames[max(frames)]) for i in indices]
            inputs = processor(clip, return_tensors="pt")
            out.append(hf(**inputs).logits.float().softmax(-1)[0].numpy())
    return out


def runtime_arms(arms: dict, args, models: dict, dirs: dict, videos: list[Path]) -> dict:
    """Add the deployment arms (module docstring) to ``arms``; return auto's choices."""
    from mar.inference import predict
    from mar.inference.runtime import choose_runtime

    choices = {}
    wanted = [("full", "full tokens", False)] * bool({"runtimes", "overlap"} & set(args.arms))
    wanted += [("mar50", "MAR 50 %", False)] * ("runtimes" in args.arms)
    wanted += [("mar50", "MAR 50 %", True)] * ("int8" in args.arms)
    per_call = (args.batch_sizes or [None])[0]
    for name, label, int8 in wanted:
        model, cfg = models[name]
        masking = cfg.test_masking()
        choice = choose_runtime(model, masking, dirs[name], int8=int8,
                                views_per_call=per_call)
        print(choice.line(), file=sys.stderr)
        choices[label, int8] = choice
        kind = "int8" if int8 else "best runtime"
        arm = f"mar predict, {label}, {kind} ({choice.runtime})"
        runs = []
        if "runtimes" in args.arms or int8:
            runs.append((arm, args.workers))
        if name == "full" and "overlap" in args.arms:
            runs.append((f"{arm}, decoding not overlapped (--workers 0)", 0))
        for arm_name, workers in runs:
            arms[arm_name] = (lambda runner=choice.model, cfg=cfg, masking=masking,
                              workers=workers: predict(runner, cfg, videos, masking,
                                                       workers=workers,
                                                       views_per_call=per_call))
    return choices


def model_only_lines(choices: dict) -> list[str]:
    """Model-only seconds per call, int8 against float32, from auto's measurements."""
    fp32, int8 = choices.get(("MAR 50 %", False)), choices.get(("MAR 50 %", True))
    if fp32 is None or int8 is None or not fp32.seconds or not int8.seconds:
        return []
    a, b = fp32.seconds[fp32.runtime], int8.seconds[int8.runtime]
    listed = "; ".join(f"{r} {'int8 ' * c.int8}{s:.3f} s" for c in (fp32, int8)
                       for r, s in c.seconds.items())
    return [f"model only, MAR 50 %, {fp32.views_per_call} views per call (auto's "
            f"measurements: {listed}): int8 ({int8.runtime}) {a / b:.2f}x float32 "
            f"({fp32.runtime})"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default=str(ROOT / ".bench-predict"),
                        help="where the long videos and the models are written")
    parser.add_argument("--long", type=int, default=4, help="long videos to add")
    parser.add_argument("--seconds", type=float, default=20.0, help="their length")
    parser.add_argument("--workers", type=int, help="mar predict --workers (default: its own)")
    parser.add_argument("--batch-sizes", type=int, nargs="+",
                        help="mar predict --batch-size values to compare (default: its own)")
    parser.add_argument("--tiny", action="store_true", help="a 2-block model (tests)")
    parser.add_argument("--bf16", action="store_true", help="add the bf16 arms")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS),
                        help="which of our arms to run (default: all; the transformers "
                        "way always runs)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    from transformers import VideoMAEImageProcessor

    from mar.data import ClipSampling
    from mar.inference import load_model, predict

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    videos = sorted(p for p in VIDEOS.glob("*") if p.suffix in (".mp4", ".avi"))
    videos += long_videos(work, args.long, args.seconds)
    hf, hf_dir, dirs = setup(work, args.tiny)
    from mar.constants import IMAGENET_MEAN, IMAGENET_STD

    # as the MCG-NJU/videomae-* checkpoints' preprocessor_config.json: shortest edge 224,
    # centre crop 224, ImageNet mean and std (the class default is 0.5 / 0.5)
    processor = VideoMAEImageProcessor(image_mean=list(IMAGENET_MEAN),
                                       image_std=list(IMAGENET_STD))
    sampling = ClipSampling("dense", 16, 4)

    def indices_of(total: int) -> list[int]:
        return sampling.indices(total, train=False)

    models = {name: load_model(d, None, SETTINGS) for name, d in dirs.items()}
    hf_name = "transformers (model card: PyAV + VideoMAEImageProcessor)"
    arms = {}
    choices = runtime_arms(arms, args, models, dirs, videos)
    for dtype in ("fp32", "bf16") if args.bf16 else ("fp32",):
        tag = "" if dtype == "fp32" else ", bf16"
        for name, label in (("mar50", "MAR 50 %"), ("full", "full tokens")) * (
                "torch" in args.arms):
            for b in args.batch_sizes or [None]:
                per_call = ("" if len(args.batch_sizes or []) < 2
                            else f", {b} view{'s' * (b > 1)} per call")
                arms[f"mar predict, {label}{per_call}{tag}"] = (
                    lambda name=name, dtype=dtype, b=b: predict(
                        *models[name], videos, models[name][1].test_masking(),
                        workers=args.workers, amp="none" if dtype == "fp32" else dtype,
                        views_per_call=b))
        arms[hf_name + tag] = (lambda dtype=dtype: transformers_way(
            hf, processor, videos, indices_of, bf16=dtype == "bf16"))
    times: dict[str, list[float]] = {a: [] for a in arms}
    results = {}
    for r in range(args.repeats):
        order = list(arms)[r % len(arms):] + list(arms)[:r % len(arms)]
        for name in order:
            start = time.perf_counter()
            results[name] = arms[name]()
            times[name].append(time.perf_counter() - start)
        print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(
            f"{times[a][-1]:.1f}s" for a in arms), flush=True)

    full_arm = next(a for a in arms if a.startswith("mar predict, full tokens"))
    full = [p.classes[0] if p.classes else -1 for p in results[full_arm]]
    theirs = [int(np.argmax(p)) for p in results[hf_name]]
    agree = sum(a == b for a, b in zip(full, theirs, strict=True))
    bf16_lines = []
    if args.bf16:  # how far bf16 moves each arm's top-5 probabilities from its fp32 run
        for a in [a for a in arms if a + ", bf16" in arms]:
            pairs = list(zip(map(top5, results[a]), map(top5, results[a + ", bf16"]),
                             strict=True))
            same = sum(max(x, key=x.get) == max(y, key=y.get) for x, y in pairs)
            gap = max(abs(p - y.get(c, 0.0)) for x, y in pairs for c, p in x.items())
            bf16_lines.append(f"{a}: bf16 top-1 equals fp32 on {same} of {len(videos)} "
                              f"videos; largest change of a top-5 probability {gap:.4f}")

    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    # auto's record of this shape was made by the runtime arms (without them, this run
    # measures once)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mar", "predict", str(videos[0]), "--checkpoint",
                    str(dirs["mar50"]), "--json", *(f"--set={s}" for s in SETTINGS)],
                   check=True, capture_output=True, env=env)
    command = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mar", "--help"], check=True,
                   capture_output=True)
    help_s = time.perf_counter() - start

    med = {a: statistics.median(t) for a, t in times.items()}
    frames = sum(1 for _ in videos)
    print(f"\n{frames} videos ({len(videos) - args.long} test videos + {args.long} of "
          f"{args.seconds:g} s at 640x360), 1 view each, {'tiny' if args.tiny else 'ViT-B/16'}"
          f", CPU: {cpu_name()} ({torch.get_num_threads()} threads; {instruction_sets()}); "
          f"{versions()}; median of {args.repeats}\n")
    print("| arm | median s | videos/s | speed-up vs transformers fp32 | at equal precision "
          "| goal |")
    print("|---|--:|--:|--:|--:|--:|")
    for a in arms:
        same = hf_name + (", bf16" if a.endswith("bf16") else "")
        ratio = med[hf_name] / med[a]
        goal = next((g for k, g in GOALS.items() if a.startswith(f"mar predict, {k} (")), None)
        verdict = "" if goal is None else (f">= {goal:g}x: {'met' if ratio >= goal else 'missed'}")
        print(f"| {a} | {med[a]:.2f} | {len(videos) / med[a]:.2f} | "
              f"{ratio:.2f}x | {med[same] / med[a]:.2f}x | {verdict} |")
    for line in model_only_lines(choices):
        print(line)
    print(f"\nfull-token top-1 agreement with transformers on the same views: {agree} of "
          f"{len(videos)}")
    for line in bf16_lines:
        print(line)
    print(f"start-up: `mar predict` of one video as a command {command:.1f} s; "
          f"`mar --help` {help_s:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"times": times, "agree": agree,
                                               "videos": [str(v) for v in videos],
                                               "command_s": command, "help_s": help_s,
                                               "top5": {a: [top5(r) for r in results[a]]
                                                        for a in arms}},
                                              indent=1))


if __name__ == "__main__":
    main()
