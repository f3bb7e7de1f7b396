"""GPU check: MAR vs standard training, inference vs transformers, torch.compile, torchrun.

One script, at most ~8 minutes on one GPU (``--budget-s``, default 480: a part that would
start after the budget is spent is skipped with a note, never run half). Five parts:

1. bf16 training steps, MAR against standard (the analogue of the paper's Table V):
   median step time and ``torch.cuda.max_memory_allocated`` peak. MAR = cell running
   50 % training masks, bridging classifier, reconstruction decoder, lambda 0.1;
   standard = all tokens (no mask), linear head, no decoder. AdamW, autocast bf16.
2. inference clips/s (bf16, then fp32) at two batch sizes: ours MAR 50 %, ours with all
   tokens, and transformers' VideoMAEForVideoClassification. Our full-token model is the
   transformers model's own weights, converted (``mar.convert``), so the two are compared
   on the same weights (top-1 agreement and max logit difference); the MAR model shares
   that encoder. Without transformers the row is skipped with a note.
3. ``torch.compile`` of the deploy path (``mar.inference.MaskedClassifier``: encoder and
   bridging head with a fixed cell-running evaluation mask): first-call (compile) time,
   speed against eager, and the max abs difference of their outputs against a tolerance.
   A compile error is reported as a line, not raised.
4. ``torchrun`` with one process: ``mar train`` on a tiny synthetic set the script writes
   (NCCL on the GPU, gloo with ``--tiny``), then a collective probe: the same launcher
   runs this script to initialise the process group and do an all_reduce, an
   all_gather_object and one DDP training step of a small MAR model. The probe is
   needed because ``mar``'s trainer creates a process group only when WORLD_SIZE > 1:
   a one-process run does no collective at all.
5. every command that runs a model, with ``--device cuda``: ``mar predict`` (fp32 and
   ``--amp bf16``), ``eval`` (of the run, and of a ``checkpoint-*`` folder, whose
   ``state.pt`` holds GPU tensors), ``extract`` and ``serve`` (one upload) on part 4's
   checkpoint, and ``mar train`` with fp16 autocast, accumulation 2 and Table VII's mask
   tokens; each must exit 0 (``serve``: answer the upload).

Every timing is a median after warm-up, with ``torch.cuda.synchronize()`` around it
(``bench_inference.timed``); peak-memory statistics are reset between configurations.
Output: a Markdown report on stdout and in ``--out`` (written atomically), and the raw
numbers in a JSON file beside it (``--out`` with ``.json``).

On a GPU machine (an H200 when one is lent):

    python benchmarks/gpu_check.py --out docs/gpu_check.md

On a CPU, a small version of everything (vit_nano, 8 frames of 32x32, patch 8; compile
with the ``aot_eager`` backend, which needs no C++ compiler run; torchrun with gloo):

    python benchmarks/gpu_check.py --tiny --out /tmp/gpu_check.md
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mar import create_model, make_masking
from mar.atomic import write_text
from mar.engine.optim import build_optimizer
from mar.flops import model_cost
from mar.inference import MaskedClassifier
from mar.losses import mar_loss
from mar.models import SIZES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import timed  # noqa: E402  (a sibling benchmark)

START = time.monotonic()  # the budget's clock (after the imports: a few seconds)

STANDARD = "standard (all tokens, linear head)"
MAR = "MAR (cell running 50%, bridging + decoder)"
OURS_MAR = "ours MAR 50% (cell running + bridging)"
OURS_FULL = "ours full tokens (linear head)"
HF = "transformers VideoMAEForVideoClassification (sdpa)"
TRAIN_RUN = "mar train under torchrun (1 process)"
PROBE_RUN = "collective probe under torchrun (1 process)"


@dataclass(frozen=True)
class Setup:
    """What one mode runs: the model and clip, the batch sizes, the repeats."""

    size: str
    frames: int
    img: int
    patch: int
    device: str
    train_batches: tuple[int, ...]
    infer_batches: tuple[int, ...]
    compile_batch: int
    warmup: int
    steps: int                 # timed repeats (training steps, inference calls)
    compile_backend: str
    train_classes: int = 174   # as bench_training (Something-Something v2)
    infer_classes: int = 400   # as bench_inference (Kinetics-400)

    def model(self, **kwargs):
        return create_model(self.size, num_frames=self.frames, img_size=self.img,
                            patch_size=self.patch, **kwargs)

    def clip(self, batch: int) -> torch.Tensor:
        return torch.randn(batch, 3, self.frames, self.img, self.img, device=self.device)

    def describe(self) -> str:
        return f"{self.size}, {self.frames}x{self.img}x{self.img} clips, patch {self.patch}"


GPU = Setup("vit_base", 16, 224, 16, "cuda", train_batches=(1, 8, 32),
            infer_batches=(1, 16), compile_batch=16, warmup=3, steps=10,
            compile_backend="inductor")
TINY = Setup("vit_nano", 8, 32, 8, "cpu", train_batches=(1, 2), infer_batches=(1, 4),
             compile_batch=2, warmup=1, steps=2, compile_backend="aot_eager")


class Budget:
    """Seconds left of ``--budget-s``, counted from the script's start."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.monotonic() - START

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def allows(self, needed: float) -> bool:
        return self.left() >= needed

    def note(self, what: str, needed: float) -> str:
        return (f"skipped {what}: {max(self.left(), 0):.0f} s left of the "
                f"{self.seconds:.0f} s budget, it starts only with {needed:.0f} s left")


def progress(budget: Budget, text: str) -> None:
    print(f"[{budget.elapsed():6.1f} s] {text}", file=sys.stderr, flush=True)


def autocast(device: str, precision: str):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device, dtype=torch.bfloat16)


def free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def first_line(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip()
    return text.splitlines()[0][:300]


# --- 1. training steps -------------------------------------------------------------------

def training_step_time(setup: Setup, mode: str, batch: int) -> dict:
    """Median bf16 step time and peak memory of one configuration (as
    ``bench_training.measure``, with autocast and any model size)."""
    device = setup.device
    torch.manual_seed(0)
    mar = mode == "mar"
    model = setup.model(num_classes=setup.train_classes, head="bridging" if mar else "linear",
                        decoder=mar).to(device).train()
    opt = build_optimizer(model, 1e-4)
    masking = make_masking("cell_running", 0.5) if mar else None
    video = setup.clip(batch)
    labels = torch.randint(0, setup.train_classes, (batch,), device=device)
    gen = torch.Generator().manual_seed(0)
    losses = []

    def step():
        mask = masking(batch, model.grid, train=True, generator=gen).to(device) if mar else None
        with autocast(device, "bf16"):
            loss = mar_loss(model(video, mask), labels, rec_weight=0.1 if mar else 0.0).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())

    tokens = model.encoder.num_tokens
    visible = masking(1, model.grid, train=True).num_visible if mar else tokens
    for _ in range(setup.warmup):  # allocates gradients and AdamW state
        step()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = [timed(step, device) for _ in range(setup.steps)]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    finite = all(torch.isfinite(x).item() for x in losses)
    return {"mode": mode, "batch": batch, "visible_tokens": visible, "tokens": tokens,
            "step_s": statistics.median(times), "times_s": times, "peak_gib": peak,
            "finite_loss": finite}


def part_training(setup: Setup, budget: Budget, reserve: float) -> dict:
    rows, notes = [], []
    for batch in setup.train_batches:
        for mode in ("standard", "mar"):
            if not budget.allows(reserve):
                notes.append(budget.note(f"{mode} at batch {batch}", reserve))
                continue
            try:
                row = training_step_time(setup, mode, batch)
            except torch.OutOfMemoryError as e:
                row = {"mode": mode, "batch": batch, "error": first_line(e)}
            free_memory(setup.device)
            rows.append(row)
            msg = (f"{row['step_s'] * 1e3:.1f} ms/step" if "error" not in row
                   else row["error"])
            progress(budget, f"  training {mode} batch {batch}: {msg}")
    return {"rows": rows, "notes": notes}


# --- 2. inference against transformers ---------------------------------------------------

def inference_models(setup: Setup, work: Path) -> tuple[dict, list[str], dict]:
    """Our full-token model with the weights of a transformers VideoMAE classifier
    (converted), our MAR model on the same encoder, and the transformers model itself."""
    size = SIZES[setup.size]
    notes, info = [], {}
    hf = None
    try:
        import transformers
        from transformers import VideoMAEConfig, VideoMAEForVideoClassification
    except ImportError as e:
        notes.append(f"transformers not installed ({first_line(e)}): its rows are skipped")
    else:
        info["transformers"] = transformers.__version__
        torch.manual_seed(0)
        config = VideoMAEConfig(
            image_size=setup.img, patch_size=setup.patch, num_frames=setup.frames,
            tubelet_size=2, hidden_size=size.embed_dim, num_hidden_layers=size.depth,
            num_attention_heads=size.num_heads,
            intermediate_size=int(size.embed_dim * size.mlp_ratio), layer_norm_eps=1e-6,
            qkv_bias=True, use_mean_pooling=True, num_labels=setup.infer_classes,
            attn_implementation="sdpa")
        hf = VideoMAEForVideoClassification(config).eval()
    full = None
    if hf is not None:
        from mar.convert import convert_checkpoint

        try:
            hf.save_pretrained(work / "hf")
            full, report = convert_checkpoint(work / "hf")
            info["converted"] = True
            notes.append(f"{OURS_FULL}: the transformers model's weights, converted by "
                         f"mar.convert ({report.config.get('name')}, head "
                         f"{report.config.get('head')})")
        except Exception as e:  # report it; compare speed on independent weights
            notes.append(f"conversion failed ({first_line(e)}): ours and transformers "
                         "run different weights, agreement not measured")
    if full is None:
        torch.manual_seed(0)
        full = setup.model(num_classes=setup.infer_classes, head="linear", final_norm=False)
        info["converted"] = False
    mar = setup.model(num_classes=setup.infer_classes, head="bridging", final_norm=False)
    mar.encoder.load_state_dict(full.encoder.state_dict())
    notes.append(f"{OURS_MAR}: the same encoder; its bridging head is newly initialised "
                 "(speed only)")
    models = {OURS_MAR: mar, OURS_FULL: full}
    if hf is not None:
        models[HF] = hf
    return {k: m.to(setup.device).eval() for k, m in models.items()}, notes, info


def inference_speed(setup: Setup, models: dict, precision: str, batch: int) -> dict:
    """Clips/s of each model, interleaved and rotated as ``bench_inference``."""
    device = setup.device
    torch.manual_seed(1)
    video = setup.clip(batch)
    mask = make_masking("cell_running", 0.5)(batch, models[OURS_MAR].grid,
                                             train=False).to(device)
    hf_video = video.transpose(1, 2).contiguous()  # transformers takes (B, T, C, H, W)
    calls = {OURS_MAR: lambda: models[OURS_MAR].classify(video, mask),
             OURS_FULL: lambda: models[OURS_FULL].classify(video)}
    if HF in models:
        calls[HF] = lambda: models[HF](pixel_values=hf_video).logits
    outputs = {}

    def run(name):
        outputs[name] = calls[name]()

    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.inference_mode(), autocast(device, precision):
        for _ in range(setup.warmup):
            for name in calls:
                run(name)
        names = list(calls)
        for i in range(setup.steps):
            for name in names[i % len(names):] + names[:i % len(names)]:
                times[name].append(timed(lambda n=name: run(n), device))
    row = {"precision": precision, "batch": batch,
           "models": {n: {"median_s": statistics.median(t), "times_s": t,
                          "clips_per_s": batch / statistics.median(t)}
                      for n, t in times.items()}}
    if HF in outputs:
        ours, theirs = outputs[OURS_FULL].float(), outputs[HF].float()
        row["max_logit_diff"] = (ours - theirs).abs().max().item()
        row["top1_agree"] = int((ours.argmax(-1) == theirs.argmax(-1)).sum())
    return row


def gflops_per_clip(setup: Setup) -> dict[str, float]:
    common = {"num_frames": setup.frames, "img_size": setup.img, "patch_size": setup.patch,
              "num_classes": setup.infer_classes}
    return {OURS_MAR: model_cost(setup.size, make_masking("cell_running", 0.5),
                                 head="bridging", final_norm=False, **common).gflops,
            OURS_FULL: model_cost(setup.size, head="linear", final_norm=False,
                                  **common).gflops,
            HF: model_cost(setup.size, head="linear", final_norm=False, **common).gflops}


def part_inference(setup: Setup, budget: Budget, reserve: float, work: Path) -> dict:
    models, notes, info = inference_models(setup, work)
    rows = []
    for precision in ("bf16", "fp32"):
        for batch in setup.infer_batches:
            if not budget.allows(reserve):
                notes.append(budget.note(f"inference {precision} at batch {batch}", reserve))
                continue
            row = inference_speed(setup, models, precision, batch)
            rows.append(row)
            progress(budget, f"  inference {precision} batch {batch}: " + ", ".join(
                f"{m['clips_per_s']:.1f}" for m in row["models"].values()) + " clips/s")
    has_hf = HF in models
    models.clear()
    free_memory(setup.device)
    return {"rows": rows, "notes": notes, "gflops": gflops_per_clip(setup),
            "transformers": has_hf, **info}


# --- 3. torch.compile --------------------------------------------------------------------

# Compiled vs eager must agree within TOLERANCE x max(1, largest eager |logit|); in bf16
# also within twice the difference between eager bf16 and eager fp32 (bf16's own rounding).
TOLERANCE = {"fp32": 1e-3, "bf16": 5e-2}


def compile_check(setup: Setup, precision: str) -> dict:
    """Compile the masked deploy path; its first-call time, speed and agreement."""
    device, batch = setup.device, setup.compile_batch
    torch.manual_seed(0)
    model = setup.model(num_classes=setup.infer_classes, head="bridging")
    mask = make_masking("cell_running", 0.5)(1, model.grid, train=False)
    eager = MaskedClassifier(model, mask).to(device).eval()
    video = setup.clip(batch)
    row = {"precision": precision, "batch": batch, "backend": setup.compile_backend}
    try:
        torch._dynamo.reset()
        compiled = torch.compile(eager, backend=setup.compile_backend)
        with torch.inference_mode(), autocast(device, precision):
            row["first_call_s"] = timed(lambda: compiled(video), device)
            ref, out = eager(video).float(), compiled(video).float()
            times = {"eager": [], "compiled": []}
            for _ in range(setup.warmup):
                eager(video)
            for i in range(setup.steps):
                for name in (("eager", "compiled") if i % 2 == 0 else ("compiled", "eager")):
                    fn = eager if name == "eager" else compiled
                    times[name].append(timed(lambda f=fn: f(video), device))
    except Exception as e:  # any compiler failure is a result, not a crash
        row["error"] = first_line(e)
        return row
    with torch.inference_mode():  # the precision's own rounding (about 0 in fp32)
        rounding = (ref - eager(video).float()).abs().max().item()
    diff = (out - ref).abs().max().item()
    tol = max(TOLERANCE[precision] * max(1.0, ref.abs().max().item()), 2 * rounding)
    row |= {"eager_s": statistics.median(times["eager"]),
            "compiled_s": statistics.median(times["compiled"]), "times_s": times,
            "max_abs_diff": diff, "tolerance": tol, "agrees": diff <= tol}
    return row


def part_compile(setup: Setup, budget: Budget, reserve: float) -> dict:
    rows, notes = [], []
    for precision in ("bf16", "fp32"):
        if not budget.allows(reserve):
            notes.append(budget.note(f"compile in {precision}", reserve))
            continue
        row = compile_check(setup, precision)
        rows.append(row)
        free_memory(setup.device)
        msg = row.get("error") or (f"first call {row['first_call_s']:.1f} s, max abs diff "
                                   f"{row['max_abs_diff']:.2e}")
        progress(budget, f"  compile {precision}: {msg}")
    return {"rows": rows, "notes": notes}


# --- 4. torchrun -------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], timeout: float, processes: int = 1) -> dict:
    """``python -m torch.distributed.run --nproc_per_node PROCESSES ARGS``: exit code,
    wall time, and the output's tail."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
           "--master_port", str(free_port()), *args]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"exit_code": None, "wall_s": time.perf_counter() - start,
                "error": f"timed out after {timeout:.0f} s"}
    out = {"exit_code": proc.returncode, "wall_s": time.perf_counter() - start,
           "stdout": proc.stdout}
    if proc.returncode != 0:
        lines = [x for x in proc.stderr.splitlines() if x.strip()]
        out["error"] = " / ".join(lines[-3:])[-500:]
    return out


def train_overrides(data: Path, device: str) -> list[str]:
    """The tiny run: vit_nano on 8 frames of 32x32 (as tests/test_engine_train.py),
    MAR training (cell running 50 %, bridging, lambda 0.1), 3 steps, one validation."""
    values = {
        "model.name": "vit_nano", "model.num_classes": 12, "model.num_frames": 8,
        "model.img_size": 32, "model.patch_size": 8, "model.head": "bridging",
        "model.drop_path": 0.0, "model.head_dropout": 0.0,
        "masking.name": "cell_running", "masking.ratio": 0.5,
        "data.root": str(data), "data.train_list": str(data / "train.csv"),
        "data.val_list": str(data / "val.csv"), "data.test_list": None,
        "data.class_names": str(data / "classes.txt"), "data.sampling": "segment",
        "data.num_frames": 8, "data.crop_size": 32, "data.short_side": None,
        "data.scale": [0.8, 1.0], "data.flip_prob": 0.0, "data.rand_augment": None,
        "data.erase_prob": 0.0, "data.mixup": 0.0, "data.cutmix": 0.0,
        "data.num_workers": 0, "data.test_clips": 1, "data.test_crops": 1,
        "train.epochs": 1, "train.max_steps": 3, "train.batch_size": 4,
        "train.lr_scaling": False, "train.warmup_epochs": 0, "train.layer_decay": 1.0,
        "train.rec_weight": 0.1, "train.device": device,
        "train.amp": "bf16" if device == "cuda" else "none", "train.log_every": 1,
        "eval.batch_size": 16,
    }
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def probe_collectives(backend: str) -> None:
    """Run by torchrun (``--probe-collectives``): initialise ``backend``, all_reduce,
    all_gather_object, one DDP training step of a small MAR model; print a JSON line."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    local = int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    total = torch.tensor([rank + 1.0], device=device)
    dist.all_reduce(total)
    ranks = [None] * world
    dist.all_gather_object(ranks, rank)
    torch.manual_seed(0)
    model = TINY.model(num_classes=12, head="bridging", decoder=True).to(device).train()
    net = DistributedDataParallel(model, device_ids=[local] if device.type == "cuda" else None)
    mask = make_masking("cell_running", 0.5)(2, model.grid, train=True).to(device)
    video = torch.randn(2, 3, TINY.frames, TINY.img, TINY.img, device=device)
    with autocast(device.type, "bf16"):
        loss = mar_loss(net(video, mask), torch.tensor([0, 1], device=device)).total
    loss.backward()
    grads = all(p.grad is not None and torch.isfinite(p.grad).all().item()
                for p in model.parameters() if p.requires_grad)
    print(json.dumps({"backend": dist.get_backend(), "world_size": world,
                      "all_reduce": total.item(), "expected": world * (world + 1) / 2,
                      "all_gather": ranks, "ddp_loss": loss.item(), "grads_finite": grads}))
    dist.destroy_process_group()


def part_torchrun(setup: Setup, budget: Budget, reserve: float, work: Path) -> dict:
    from mar.data.synth import SynthConfig, synthesize

    backend = "nccl" if setup.device == "cuda" else "gloo"
    available = (torch.distributed.is_nccl_available() if backend == "nccl"
                 else torch.distributed.is_gloo_available())
    result = {"backend": backend, "backend_available": available, "notes": []}
    data = work / "synth"
    synthesize(data, SynthConfig(num_frames=8, size=32, per_class_train=2, per_class_val=1))
    run = work / "run"
    train = torchrun(["-m", "mar", "train", "--out", str(run),
                      *train_overrides(data, setup.device)], max(budget.left() - 20, 20))
    train.pop("stdout", None)
    if (run / "summary.json").is_file():
        summary = json.loads((run / "summary.json").read_text())
        train["summary"] = {k: v for k, v in summary.items() if k != "skipped_files"}
    if (run / "metrics.jsonl").is_file():
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        train["steps"] = sum("loss" in r for r in records)
    train["ok"] = train["exit_code"] == 0 and train.get("steps") == 3
    result["train"] = train
    progress(budget, f"  torchrun train: exit {train['exit_code']}, {train['wall_s']:.1f} s")

    if not budget.allows(reserve / 3):
        result["notes"].append(budget.note("the collective probe", reserve / 3))
        return result
    # two processes (each on its own GPU) where there are two GPUs: NCCL between them
    processes = 2 if setup.device == "cuda" and torch.cuda.device_count() >= 2 else 1
    if processes == 1:
        result["notes"].append("one process: the 2-process NCCL test needs 2 GPUs")
    probe = torchrun([__file__, "--probe-collectives", backend], max(budget.left() - 5, 20),
                     processes)
    lines = probe.pop("stdout", "").strip().splitlines()
    if probe["exit_code"] == 0 and lines:
        try:
            probe["report"] = json.loads(lines[-1])
        except json.JSONDecodeError:
            probe["error"] = f"unreadable probe output: {lines[-1][:200]}"
    rep = probe.get("report", {})
    probe["ok"] = (probe["exit_code"] == 0 and rep.get("backend") == backend
                   and rep.get("all_reduce") == rep.get("expected")
                   and rep.get("grads_finite") is True)
    result["probe"] = probe
    progress(budget, f"  torchrun probe: exit {probe['exit_code']}, backend "
                     f"{rep.get('backend')}, {probe['wall_s']:.1f} s")
    return result


def mar_command(args: list[str], timeout: float) -> dict:
    """``python -m mar ARGS``: exit code, wall time, the error's last lines."""
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "mar", *args], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"exit_code": None, "wall_s": time.perf_counter() - start, "ok": False,
                "error": f"timed out after {timeout:.0f} s"}
    out = {"exit_code": proc.returncode, "wall_s": time.perf_counter() - start,
           "ok": proc.returncode == 0}
    if proc.returncode != 0:
        lines = [x for x in proc.stderr.splitlines() if x.strip()]
        out["error"] = " / ".join(lines[-3:])[-500:]
    return out


def serve_once(run: Path, video: Path, device: str, timeout: float) -> dict:
    """``mar serve --device DEVICE``: wait for /readyz, POST one video, stop the server."""
    import urllib.request

    port = free_port()
    start = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "mar", "serve", "--checkpoint", str(run),
                               "--device", device, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    out = {"exit_code": None, "ok": False}
    try:
        while time.perf_counter() - start < timeout:
            if server.poll() is not None:
                out["error"] = " / ".join(server.stderr.read().splitlines()[-3:])[-500:]
                break
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            out["error"] = f"not ready after {timeout:.0f} s"
        if "error" not in out:
            boundary = "marGpuCheckBoundary"
            body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"video\"; "
                    f"filename=\"{video.name}\"\r\nContent-Type: video/mp4\r\n\r\n"
                    ).encode() + video.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
            request = urllib.request.Request(
                f"{url}/v1/predict", data=body, method="POST",
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
            with urllib.request.urlopen(request, timeout=timeout) as r:
                answer = json.loads(r.read())
            out["ok"] = bool(answer.get("top"))
            out["exit_code"] = 0
    except Exception as e:
        out["error"] = first_line(e)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    out["wall_s"] = time.perf_counter() - start
    return out


def part_commands(setup: Setup, budget: Budget, reserve: float, work: Path) -> dict:
    """``mar predict``, ``eval``, ``extract`` and ``serve`` with ``--device`` the GPU, on the
    checkpoint of part 4's training run: the first GPU run of every command."""
    run, data = work / "run", work / "synth"
    if not (run / "config.yaml").is_file():
        return {"skipped": "part 4 left no training run to load"}
    device = "cuda" if setup.device == "cuda" else "cpu"
    video = next(p for p in sorted(data.rglob("*.mp4")))
    common = ["--checkpoint", str(run), "--device", device]
    checkpoint = sorted(run.glob("checkpoint-*"))[-1]   # its state.pt holds GPU tensors
    commands = {
        "predict": ["predict", str(video), *common, "--json"],
        "predict --amp bf16": ["predict", str(video), *common, "--json", "--amp", "bf16"],
        "eval": ["eval", *common, "--set", f"data.test_list={data / 'val.csv'}"],
        "eval checkpoint-*": ["eval", "--checkpoint", str(checkpoint), "--device", device,
                              "--set", f"data.test_list={data / 'val.csv'}"],
        "extract": ["extract", str(data / "val.csv"), "--root", str(data), *common,
                    "--out", str(work / "features")],
        # Table VII's mask tokens under fp16 with its GradScaler, and accumulation
        "train fp16, accumulation 2, mask tokens": [
            "train", "--out", str(work / "run_fp16"), *train_overrides(data, setup.device),
            "train.amp=fp16", "train.accum_steps=2", "train.batch_size=2",
            "model.head_mask_tokens=true"],
    }
    result = {"device": device, "commands": {}, "notes": []}
    for name, args in commands.items():
        if not budget.allows(reserve):
            result["notes"].append(budget.note(f"mar {name}", reserve))
            continue
        result["commands"][name] = mar_command(args, max(budget.left() - reserve, 30))
        progress(budget, f"  mar {name}: exit {result['commands'][name]['exit_code']}")
    if budget.allows(reserve):
        result["commands"]["serve"] = serve_once(run, video, device,
                                                 max(budget.left() - reserve, 30))
        progress(budget, f"  mar serve: {'ok' if result['commands']['serve']['ok'] else 'FAILED'}")
    else:
        result["notes"].append(budget.note("mar serve", reserve))
    return result


def render_commands(part: dict | None) -> list[str]:
    lines = ["## 5. Every command on the device", ""]
    if skipped(part):
        return lines + skipped(part)
    lines += [f"`mar COMMAND --device {part['device']}` on part 4's checkpoint.", ""]
    rows = [[f"mar {name}", fmt(r["exit_code"], "d"), f"{r['wall_s']:.1f}",
             "ok" if r["ok"] else f"FAILED: {r.get('error')}"]
            for name, r in part["commands"].items()]
    lines += table(["command", "exit code", "wall s", "result"], "lrrl", rows)
    return lines + notes_md(part["notes"]) + [""]


# --- the report --------------------------------------------------------------------------

def fmt(value, spec: str = ".2f", missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def machine(setup: Setup, tiny: bool) -> dict:
    out = {"mode": "--tiny (CPU)" if tiny else "GPU", "torch": torch.__version__,
           "fp32_matmul_precision": torch.backends.cuda.matmul.fp32_precision,
           "cuda": torch.version.cuda, "python": platform.python_version(),
           "cpu_count": os.cpu_count(), "setup": asdict(setup),
           "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if setup.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        out |= {"device": torch.cuda.get_device_name(0),
                "device_memory_gib": props.total_memory / 2**30,
                "cudnn": torch.backends.cudnn.version()}
    else:
        out["device"] = (f"CPU ({platform.processor() or platform.machine()}), "
                         f"{torch.get_num_threads()} threads")
    return out


def notes_md(notes: list[str]) -> list[str]:
    return [f"- {n}" for n in notes]


def render(results: dict) -> str:
    m = results["machine"]
    lines = ["# GPU check", "", "## Machine", "",
             f"- mode: {m['mode']}; model {results['setup_text']}",
             f"- device: {m['device']}" + (f", {m['device_memory_gib']:.0f} GiB"
                                           if "device_memory_gib" in m else ""),
             f"- torch {m['torch']}, CUDA {m['cuda'] or 'n/a'}"
             + (f", cuDNN {m['cudnn']}" if m.get("cudnn") else "")
             + f", Python {m['python']}, {m['cpu_count']} CPU cores; fp32 matmuls "
             + ("on TF32" if m["fp32_matmul_precision"] == "tf32"
                else "in full fp32 (TF32 off)"),
             f"- run {m['date_utc']}; wall time {results['wall_s']:.0f} s of a "
             f"{results['budget_s']:.0f} s budget", ""]
    if m["mode"].startswith("--tiny"):
        lines += ["A smoke run of every part on a CPU: a few steps of a tiny model, so its "
                  "timings are not a benchmark.", ""]
    lines += render_training(results.get("training"))
    lines += render_inference(results.get("inference"))
    lines += render_compile(results.get("compile"))
    lines += render_torchrun(results.get("torchrun"))
    lines += render_commands(results.get("commands"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).rstrip() + "\n"


def skipped(part: dict | None) -> list[str]:
    if part is None:
        return ["Not run.", ""]
    if "skipped" in part:
        return [part["skipped"], ""]
    if "error" in part:
        return [f"part failed: {part['error']}", ""]
    return []


def table(header: list[str], align: str, rows: list[list]) -> list[str]:
    """A Markdown table (``align``: one ``l`` or ``r`` per column); none without rows."""
    if not rows:
        return []

    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    rule = "|" + "|".join("---" if a == "l" else "--:" for a in align) + "|"
    return [line(header), rule, *map(line, rows), ""]


def render_training(part: dict | None) -> list[str]:
    lines = ["## 1. Training step, bf16 autocast: MAR vs standard (Table V analogue)", ""]
    if skipped(part):
        return lines + skipped(part)
    lines += ["AdamW; warm-up steps, then the median of the timed steps; peak = "
              "`torch.cuda.max_memory_allocated` (n/a on a CPU).", ""]
    rows, by = [], {}
    for r in part["rows"]:
        label = MAR if r["mode"] == "mar" else STANDARD
        if "error" in r:
            rows.append([r["batch"], label, "", r["error"], "", ""])
            continue
        by[(r["mode"], r["batch"])] = r
        rows.append([r["batch"], label, f"{r['visible_tokens']} / {r['tokens']}",
                     f"{r['step_s'] * 1e3:.1f}", f"{r['batch'] / r['step_s']:.1f}",
                     fmt(r["peak_gib"])])
    lines += table(["batch", "setting", "visible tokens", "median ms/step", "clips/s",
                    "peak GiB"], "rlrrrr", rows)
    for batch in sorted({b for _, b in by}):
        st, ma = by.get(("standard", batch)), by.get(("mar", batch))
        if st and ma:
            mem = (f"{ma['peak_gib'] / st['peak_gib']:.2f}x standard's" if st["peak_gib"]
                   else "n/a")
            lines.append(f"- batch {batch}: MAR step time {ma['step_s'] / st['step_s']:.2f}x "
                         f"standard's (speed-up {st['step_s'] / ma['step_s']:.2f}x); "
                         f"peak memory {mem}")
    if any(not r.get("finite_loss", True) for r in part["rows"]):
        lines.append("- warning: a non-finite loss occurred")
    return lines + notes_md(part["notes"]) + [""]


def render_inference(part: dict | None) -> list[str]:
    lines = ["## 2. Inference: ours vs transformers", ""]
    if skipped(part):
        return lines + skipped(part)
    g = part["gflops"]
    lines += ["`torch.inference_mode`; the models interleaved, medians.", ""]
    rows, agreement = [], []
    for r in part["rows"]:
        hf = r["models"].get(HF)
        for name in (OURS_MAR, OURS_FULL, HF):
            t = r["models"].get(name)
            if t is None:
                rows.append([r["precision"], r["batch"], name, "",
                             "skipped: transformers not installed", "", ""])
                continue
            ratio = f"{hf['median_s'] / t['median_s']:.2f}x" if hf else "n/a"
            rows.append([r["precision"], r["batch"], name, f"{g[name]:.3g}",
                         f"{t['median_s'] * 1e3:.1f}", f"{t['clips_per_s']:.1f}", ratio])
        if "top1_agree" in r and part.get("converted"):
            agreement.append(f"- full tokens vs transformers, {r['precision']}, batch "
                             f"{r['batch']}: top-1 agreement {r['top1_agree']}/{r['batch']}, "
                             f"max logit difference {r['max_logit_diff']:.2e}")
    lines += table(["precision", "batch", "model", "GFLOPs/clip", "median ms", "clips/s",
                    "vs transformers"], "lrlrrrr", rows)
    return lines + agreement + notes_md(part["notes"]) + [""]


def render_compile(part: dict | None) -> list[str]:
    lines = ["## 3. torch.compile of the inference path", ""]
    if skipped(part):
        return lines + skipped(part)
    lines += ["`MaskedClassifier` (encoder + bridging head, fixed cell-running 50% "
              "evaluation mask); the first call includes compilation.", ""]
    rows, failures = [], []
    for r in part["rows"]:
        if "error" in r:
            failures.append(f"- compile failed ({r['precision']}, backend {r['backend']}): "
                            f"{r['error']}")
            continue
        rows.append([r["precision"], r["batch"], r["backend"], f"{r['first_call_s']:.2f}",
                     f"{r['eager_s'] * 1e3:.2f}", f"{r['compiled_s'] * 1e3:.2f}",
                     f"{r['eager_s'] / r['compiled_s']:.2f}x", f"{r['max_abs_diff']:.2e}",
                     f"{r['tolerance']:.1e}", "yes" if r["agrees"] else "NO"])
    lines += table(["precision", "batch", "backend", "first call s", "eager ms",
                    "compiled ms", "speed-up", "max abs diff", "tolerance", "agrees"],
                   "lrlrrrrrrl", rows)
    return lines + failures + notes_md(part["notes"]) + [""]


def render_torchrun(part: dict | None) -> list[str]:
    lines = ["## 4. torchrun, one process", ""]
    if skipped(part):
        return lines + skipped(part)
    lines += [f"{part['backend']} available: "
              f"{'yes' if part['backend_available'] else 'no'}. mar's trainer creates a "
              "process group only when WORLD_SIZE > 1, so the one-process training run "
              "does no collective; the probe initialises the group with "
              f"{part['backend']} under the same launcher and runs an all_reduce, an "
              "all_gather_object and one DDP step of a small MAR model.", ""]
    train = part["train"]
    if train["ok"]:
        s = train.get("summary", {})
        peak = next(((k, v) for k, v in s.items() if k.startswith("peak_memory")), None)
        what = f"ok: {train['steps']} steps" + (
            f", peak {peak[1]:.2f} GiB ({peak[0].removeprefix('peak_memory_')[:-4]})"
            if peak else "")
    else:
        what = "FAILED: " + (train.get("error") or f"{train.get('steps')} steps logged")
    rows = [[TRAIN_RUN, "none (world of one)", fmt(train["exit_code"], "d"),
             f"{train['wall_s']:.1f}", what]]
    probe = part.get("probe")
    if probe:
        rep = probe.get("report", {})
        what = (f"ok: all_reduce {rep['all_reduce']:g}, DDP loss {rep['ddp_loss']:.3f}"
                if probe["ok"] else f"FAILED: {probe.get('error') or rep}")
        rows.append([PROBE_RUN, rep.get("backend", "n/a"), fmt(probe["exit_code"], "d"),
                     f"{probe['wall_s']:.1f}", what])
    lines += table(["run", "backend", "exit code", "wall s", "result"], "llrrl", rows)
    return lines + notes_md(part["notes"]) + [""]


# --- main --------------------------------------------------------------------------------

def run_part(results: dict, key: str, title: str, budget: Budget, reserve: float, fn):
    """Run one part if the budget allows it; a part that raises is reported, not fatal."""
    if not budget.allows(reserve):
        results[key] = {"skipped": budget.note(f"this part ({title})", reserve)}
        progress(budget, f"{title}: skipped (budget)")
        return
    progress(budget, f"{title} ...")
    try:
        results[key] = fn()
    except Exception as e:
        results[key] = {"error": first_line(e)}
        progress(budget, f"{title}: failed: {first_line(e)}")
    else:
        progress(budget, f"{title}: done")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true",
                        help="the small CPU version (vit_nano, 8x32x32), for tests")
    parser.add_argument("--out", default="gpu_check.md",
                        help="the Markdown report; the JSON goes beside it")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="skip the remaining parts once this many seconds are spent")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend (default: inductor; aot_eager with --tiny)")
    parser.add_argument("--probe-collectives", metavar="BACKEND", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe_collectives:
        probe_collectives(args.probe_collectives)
        return 0
    if not args.tiny and not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU (--tiny runs the CPU version)",
              file=sys.stderr)
        return 2
    setup = TINY if args.tiny else GPU
    if args.compile_backend:
        setup = Setup(**(asdict(setup) | {"compile_backend": args.compile_backend}))
    # Seconds a part must have left to start. A configuration inside a part also keeps
    # the reserves of the parts after it, so a slow part cannot crowd them out.
    reserve = ({"training": 5, "inference": 5, "compile": 10, "torchrun": 20, "commands": 10}
               if args.tiny else
               {"training": 30, "inference": 20, "compile": 120, "torchrun": 60,
                "commands": 30})
    keep = {k: sum(list(reserve.values())[i:]) for i, k in enumerate(reserve)}
    budget = Budget(args.budget_s)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(setup, args.tiny), "setup_text": setup.describe(),
               "budget_s": args.budget_s}
    progress(budget, f"GPU check on {results['machine']['device']}, {setup.describe()}")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        parts = {
            "training": ("part 1/5: training steps",
                         lambda: part_training(setup, budget, keep["training"])),
            "inference": ("part 2/5: inference vs transformers",
                          lambda: part_inference(setup, budget, keep["inference"], work)),
            "compile": ("part 3/5: torch.compile",
                        lambda: part_compile(setup, budget, keep["compile"])),
            "torchrun": ("part 4/5: torchrun",
                         lambda: part_torchrun(setup, budget, keep["torchrun"], work)),
            "commands": ("part 5/5: every command with --device",
                         lambda: part_commands(setup, budget, keep["commands"], work)),
        }
        for key, (title, fn) in parts.items():
            run_part(results, key, title, budget, reserve[key], fn)
    results["wall_s"] = budget.elapsed()
    text = render(results)
    print(text)
    write_text(out, text)
    write_text(out.with_suffix(".json"), json.dumps(results, indent=1, default=str) + "\n")
    progress(budget, f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
