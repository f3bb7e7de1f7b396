"""The GPU paths, checked on a CPU: what would crash, be silently wrong or stall on a GPU
that no line of this project has run on.

- one device: every op of training, evaluation, prediction, extraction and serving runs
  with the model on the ``meta`` device under a mode that records any op mixing devices
  and every host sync (``.item()``, ``.tolist()``, ``.cpu()``...) of a device tensor;
- the fake GPU (``fake_gpu``): the arguments of every move, loader and optimizer;
- checkpoints written on a GPU open on a CPU; every head, mask and decoder runs under
  bf16 and fp16 autocast; every parameter trains or the config is refused; torchrun's
  set-up on GPUs, with the process group, DDP and the devices mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import nullcontext

import pytest
import torch
from conftest import CONFIGS, TINY_MODEL, as_args, shrink
from fakegpu import keep_tf32
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from videos import REAL

from mar.cli import main
from mar.config import ConfigError, build_config, load_config
from mar.runtime.distributed import DistInfo

META = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("meta"))
CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
SYNCS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.numpy,
         torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.__int__,
         torch.Tensor.__index__}


# what moves a tensor or module between devices (Module.to asks the middle one)
MOVES = {torch.Tensor.to, torch.Tensor.copy_, torch._has_compatible_shallow_copy_type}


class OneDevice(TorchFunctionMode):
    """Records ops whose tensor arguments live on more than one device (a CPU scalar, a
    0-dim tensor, may join a device op, as CUDA allows) and host syncs of tensors on
    ``device``. A sync returns zeros of the right shape, so the code runs on: ``meta``
    tensors hold no values."""

    def __init__(self, device: str = "meta"):
        super().__init__()
        self.device = torch.device(device)
        self.syncs: list[str] = []
        self.mixed: list[tuple[str, list[str]]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        on = any(t.device == self.device for t in tensors)
        if not on:
            return func(*args, **kwargs)
        devices = {str(t.device) for t in tensors if t.dim() > 0 or t.device == self.device}
        if len(devices) > 1 and func not in MOVES:
            self.mixed.append((getattr(func, "__name__", str(func)), sorted(devices)))
        first = args[0] if args else None
        if func in SYNCS:
            self.syncs.append(func.__name__)
            fake = torch.zeros(first.shape, dtype=first.dtype)
            return fake if func is torch.Tensor.cpu else func(fake)
        if func is torch.Tensor.to:
            target = [a for a in (*args[1:], kwargs.get("device"))
                      if isinstance(a, str | torch.device)]
            if target and torch.device(target[0]).type == "cpu":
                self.syncs.append("to(cpu)")
                dtype = next((a for a in (*args[1:], kwargs.get("dtype"))
                              if isinstance(a, torch.dtype)), first.dtype)
                return torch.zeros(first.shape, dtype=dtype)
        return func(*args, **kwargs)


def tiny_tree(model: dict | None = None, **sections) -> dict:
    """A config tree of :data:`TINY_MODEL` (its clip size in ``data``)."""
    return {"model": TINY_MODEL | (model or {}), "data": {"num_frames": 4, "crop_size": 32},
            **sections}


@pytest.fixture
def meta_autocast(monkeypatch):
    """``torch.autocast("meta")`` does not exist: a no-op there, the real one elsewhere."""
    real = torch.autocast

    def autocast(device_type, *args, **kwargs):
        return nullcontext() if device_type == "meta" else real(device_type, *args, **kwargs)

    monkeypatch.setattr(torch, "autocast", autocast)


# --- one device, few syncs -------------------------------------------------------------

def test_a_training_run_keeps_to_one_device_and_syncs_once_per_log_every(
        tiny_lists, tmp_path, monkeypatch, meta_autocast):
    """The shipped SSv2 MAR config (mixup, cutmix, decoder, bridging head, accumulation
    4) for 8 steps of a 9-step epoch with log_every 4: the losses reach the host at steps
    1, 4 and 8 only, and no op mixes the model's device with another."""
    import mar.engine.trainer as trainer

    config = CONFIGS / "ssv2_vit_base_mar50.yaml"
    longer = tmp_path / "train.csv"              # 72 videos: 9 steps of 2 x 4 clips
    longer.write_text(tiny_lists["train"].read_text() * 3)
    cfg = load_config(config, as_args(shrink(config, tiny_lists) | {
        "data.train_list": str(longer), "train.log_every": 4, "train.max_steps": 8,
        "data.val_list": None, "data.test_list": None}))
    assert cfg.data.mixup > 0 and cfg.train.rec_weight > 0 and cfg.model.drop_path > 0
    assert cfg.train.accum_steps == 4
    monkeypatch.setattr(trainer, "init_distributed", lambda device: META)
    monkeypatch.setattr(trainer.Checkpointer, "save", lambda *a, **k: None)  # no meta weights
    steps = []
    real_update = trainer.TrainStep.update
    mode = OneDevice()

    def update(self, lr):
        real_update(self, lr)
        steps.append(len(mode.syncs))

    monkeypatch.setattr(trainer.TrainStep, "update", update)
    with mode:
        trainer.train(cfg, tmp_path / "run")
    assert mode.mixed == [], sorted({(f, tuple(d)) for f, d in mode.mixed})
    assert len(steps) == 8
    # syncs after each step's update: the read of step n shows from update n + 1 on
    assert steps == [0, 1, 1, 1, 2, 2, 2, 2] and mode.syncs == ["tolist"] * 3, (steps,
                                                                               mode.syncs)


def test_inference_paths_keep_to_one_device(model_dir, tmp_path, meta_autocast):
    """eval, predict, extract and the server's batches, with the model on ``meta`` and
    real videos decoded on the CPU: no op mixes devices, and the only syncs are each
    model call's result coming back."""
    from mar.data import VideoRecord, view_loader
    from mar.engine.evaluate import evaluate
    from mar.inference import load_model, predict
    from mar.inference.extract import Source, extract_share, settings_of
    from mar.serve.predictor import ServedModel

    model, cfg = load_model(model_dir, None, ["data.test_clips=2", "data.test_crops=1"])
    model.to("meta")
    masking = cfg.test_masking()
    videos = [REAL / "tree.avi", REAL / "bigbuckbunny.mp4"]
    (tmp_path / "features").mkdir()
    mode = OneDevice()
    with mode:
        predict(model, cfg, videos, masking, views_per_call=2, workers=0)
        loader = view_loader(cfg.views_dataset([VideoRecord(str(v), i) for i, v in
                                                enumerate(videos)], 2, 1), 2)
        evaluate(model, loader, masking, CPU, cfg.model.num_classes, views_per_call=2)
        settings = settings_of(model, cfg, masking, "checkpoint", str(model_dir), clips=2,
                               crops=1, tokens=True, store_dtype="float32", amp="none",
                               device="meta", views_per_call=3)
        extract_share(model, cfg, [Source(v.name, str(v)) for v in videos], tmp_path,
                      masking, settings, workers=0)
    calls = 2 + 2 + 2           # predict, eval: one call per video; extract: 4 views in 3s
    assert mode.mixed == [] and mode.syncs == ["cpu"] * calls, mode.syncs
    served = ServedModel(model_dir, device="cpu", overrides=["data.test_clips=1",
                                                             "data.test_crops=1"])
    served.model.to("meta")
    views = served.decode(REAL / "tree.avi", max_frames=10_000).views
    mode = OneDevice()
    with mode:
        served.scores(torch.cat([views, views]))
    assert mode.mixed == [] and mode.syncs == ["cpu"]


# --- the fake GPU: moves, loaders, optimizer -------------------------------------------

def test_training_on_a_gpu_pins_batches_copies_them_non_blocking_and_keeps_workers(
        tiny_lists, tmp_path, fake_gpu):
    config = CONFIGS / "tiny_cpu.yaml"
    overrides = shrink(config, tiny_lists, steps=2) | {"data.num_workers": 1,
                                                       "train.max_steps": 2}
    assert main(["train", str(config), *as_args(overrides), "--out", str(tmp_path / "run"),
                 "--device", "cuda"]) == 0
    assert ("MAR", "cuda:0") in fake_gpu
    tensor_moves = fake_gpu.tensor_kwargs
    assert len(tensor_moves) >= 2 * 4
    assert all(k.get("non_blocking") for k in tensor_moves), tensor_moves
    train_loader, *eval_loaders = fake_gpu.loaders
    for loader in fake_gpu.loaders:
        assert loader["pin_memory"] and loader["persistent_workers"], loader
    assert train_loader["num_workers"] == 1 and len(eval_loaders) == 2      # val, test
    assert fake_gpu.optimizers == [{"lr": pytest.approx(fake_gpu.optimizers[0]["lr"]),
                                    "betas": (0.9, 0.999), "eps": 1e-8, "fused": True}]


def test_predict_and_extract_pin_their_batches_on_a_gpu(model_dir, tmp_path, fake_gpu):
    video = str(REAL / "tree.avi")
    assert main(["predict", video, "--checkpoint", str(model_dir), "--device", "cuda",
                 "--workers", "0"]) == 0
    assert main(["extract", video, "--checkpoint", str(model_dir), "--device", "cuda",
                 "--out", str(tmp_path / "f"), "--workers", "0"]) == 0
    assert len(fake_gpu.loaders) == 2 and all(k["pin_memory"] for k in fake_gpu.loaders)


def test_the_cpu_pins_nothing_and_runs_plain_adamw(tiny_lists, tmp_path, fake_gpu):
    config = CONFIGS / "tiny_cpu.yaml"
    assert main(["train", str(config), *as_args(shrink(config, tiny_lists, steps=1)),
                 "train.max_steps=1", "--out", str(tmp_path / "run"), "--device", "cpu"]) == 0
    assert fake_gpu == [] and not any(k["pin_memory"] for k in fake_gpu.loaders)
    assert "fused" not in fake_gpu.optimizers[0]


def test_tf32_is_on_once_a_command_takes_the_gpu(fake_gpu):
    from mar.runtime.device import resolve_device

    torch.backends.cuda.matmul.fp32_precision = "none"      # fake_gpu restores it
    resolve_device("cpu")
    assert torch.backends.cuda.matmul.fp32_precision != "tf32"
    resolve_device("auto")                                   # the (fake) GPU
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"


# --- determinism -----------------------------------------------------------------------

def test_deterministic_training_on_cuda_sets_what_pytorch_requires(monkeypatch):
    from mar.runtime.device import make_deterministic

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    for flag in ("benchmark", "deterministic"):
        monkeypatch.setattr(torch.backends.cudnn, flag, getattr(torch.backends.cudnn, flag))
    flash = torch.backends.cuda.flash_sdp_enabled()
    try:
        make_deterministic(torch.device("cuda"))
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert not torch.backends.cuda.flash_sdp_enabled()
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cuda.enable_flash_sdp(flash)


def test_an_op_without_a_deterministic_kernel_is_a_one_line_error():
    from mar.engine.trainer import TrainStep

    class Net(torch.nn.Module):
        def forward(self, video, mask):
            raise RuntimeError("index_add_cuda_ does not have a deterministic implementation, "
                               "but you set 'torch.use_deterministic_algorithms(True)'. You "
                               "can turn off determinism just for this operation...\nmore")

    cfg = build_config(tiny_tree({"head": "linear"}))
    net = Net()
    net.grid = (2, 4, 4)
    step = TrainStep(net, net, None, None, cfg.masking.build(), torch.Generator(), None,
                     rec_weight=0.0, label_smoothing=0.0, accum_steps=1, clip_grad=None,
                     amp_dtype=None, info=CPU)
    with pytest.raises(ConfigError) as e:
        step.forward_backward({"video": torch.zeros(2, 3, 4, 32, 32, dtype=torch.uint8),
                               "erase": torch.zeros(2, 5, dtype=torch.long),
                               "label": torch.zeros(2, dtype=torch.long)})
    assert "\n" not in str(e.value) and "index_add_cuda_" in str(e.value)
    assert "train.deterministic=false" in str(e.value)


# --- checkpoints written on a GPU ------------------------------------------------------

def test_checkpoints_written_on_a_gpu_open_on_a_cpu(tiny_lists, tmp_path, monkeypatch,
                                                    capsys):
    """A run whose state.pt claims CUDA storage (AdamW's moments on the training GPU):
    eval and predict open its checkpoint folder, a checkpoint of before config.yaml
    loads, the best score reads, and training resumes, all on a machine without CUDA."""
    import shutil

    import mar.engine.checkpoint as checkpoint
    from mar.inference import load_model

    config = CONFIGS / "tiny_cpu.yaml"
    args = ["train", str(config), *as_args(shrink(config, tiny_lists, steps=4)), "--out",
            str(tmp_path / "run"), "--device", "cpu"]
    with monkeypatch.context() as m:            # saved as if from a GPU
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        assert main([*args, "train.max_steps=2"]) == 0
    ckpt = checkpoint.latest_checkpoint(tmp_path / "run")
    with pytest.raises(RuntimeError, match="CUDA"):    # it really claims the GPU
        torch.load(ckpt / "state.pt", weights_only=True)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(ckpt), "--split", "val"]) == 0
    assert main(["predict", str(REAL / "tree.avi"), "--checkpoint", str(ckpt)]) == 0
    legacy = tmp_path / "legacy"
    shutil.copytree(ckpt, legacy)
    (legacy / "config.yaml").unlink()
    (legacy / "masking.json").unlink()
    model, cfg = load_model(legacy)
    assert cfg.model.name == "vit_nano"
    assert checkpoint.best_metric(tmp_path / "run") is not None
    assert main([*args, "--resume", "auto"]) == 0
    assert f"resumed from {ckpt}" in capsys.readouterr().out


# --- autocast, gradients ---------------------------------------------------------------

HEADS = [{"head": "linear"}, {"head": "mlp"}, {"head": "bridging"},
         {"head": "bridging", "head_pos_embed": True},
         {"head": "bridging", "head_mask_tokens": True},
         {"head": "bridging", "head_mask_tokens": True, "head_pos_embed": True}]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("head", HEADS, ids=lambda h: "-".join(f"{k}" for k in h if h[k]))
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75])
def test_every_head_and_mask_runs_under_autocast(dtype, head, ratio):
    """Forward and backward of the training model (decoder included when something is
    masked) and the test-time classify, under CPU autocast, as the configs' bf16 and
    fp16 runs do on a GPU (Table VII's mask tokens included)."""
    from mar.losses import mar_loss
    from mar.masking import make_masking
    from mar.models import create_model

    torch.manual_seed(0)
    model = create_model(**TINY_MODEL, **head, decoder=ratio > 0)
    masking = make_masking("cell_running" if ratio else "none", ratio)
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.autocast("cpu", dtype=dtype):
        out = model(video, masking(2, model.grid, train=True))
        loss = mar_loss(out, torch.tensor([0, 1]), 0.1)
        loss.total.backward()
        with torch.no_grad():
            logits = model.eval().classify(video, masking(2, model.grid, train=False))
    assert torch.isfinite(loss.total) and logits.shape == (2, 4)


COMBOS = [(task, head, masking, rec)
          for task in ("finetune", "pretrain")
          for head in (HEADS if task == "finetune" else [{}])
          for masking in ({"name": "none", "ratio": 0.0}, {"name": "cell_running", "ratio": 0.0},
                          {"name": "cell_running", "ratio": 0.5}, {"name": "tube", "ratio": 0.9})
          for rec in (0.0, 0.1)]


@pytest.mark.parametrize("task, head, masking, rec", COMBOS)
def test_every_parameter_trains_or_the_config_is_refused(task, head, masking, rec):
    """DDP (without find_unused_parameters) raises at the second step when a parameter
    got no gradient; so after one step every parameter has one, or the config did not
    load."""
    from mar.engine.trainer import build_model
    from mar.losses import mar_loss

    tree = tiny_tree(head, masking=masking, train={"task": task, "rec_weight": rec})
    try:
        cfg = build_config(tree)
    except ConfigError as e:
        assert "\n" not in str(e) and ("mask" in str(e))
        return
    torch.manual_seed(0)
    model = build_model(cfg, CPU).train()
    mask = cfg.masking.build()(2, model.grid, train=True)
    out = model(torch.randn(2, 3, 4, 32, 32), mask)
    mar_loss(out, torch.tensor([0, 1]), rec if task == "finetune" else 1.0).total.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == [], missing


# --- torchrun on GPUs, mocked ----------------------------------------------------------

@pytest.fixture
def two_gpus_rank_1(monkeypatch, request):
    import torch.distributed as dist

    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(dist, "is_initialized", lambda: any(c[0] == "init" for c in calls))
    monkeypatch.setattr(dist, "init_process_group",
                        lambda backend, **kw: calls.append(("init", backend, kw)))
    request.addfinalizer(keep_tf32())
    return calls


def test_torchrun_on_gpus_binds_each_rank_to_its_own_gpu(two_gpus_rank_1, monkeypatch):
    import mar.engine.trainer as trainer
    from mar.runtime.distributed import init_distributed

    info = init_distributed("cuda")
    cuda1 = torch.device("cuda", 1)
    assert info == DistInfo(1, 2, 1, cuda1)
    assert two_gpus_rank_1 == [("set_device", cuda1), ("init", "nccl", {"device_id": cuda1})]
    wrapped = {}
    monkeypatch.setattr(trainer, "DistributedDataParallel",
                        lambda module, **kw: wrapped.update(kw) or module)
    trainer.wrap_ddp(torch.nn.Linear(2, 2), info)
    assert wrapped == {"device_ids": [1], "broadcast_buffers": False}
    with pytest.raises(ConfigError, match="LOCAL_RANK"):
        init_distributed("cuda:1")          # every rank on one GPU: refused


def test_training_always_destroys_the_process_group(monkeypatch):
    import mar.engine.trainer as trainer

    calls = []
    monkeypatch.setattr(trainer, "init_distributed", lambda device: CPU)
    monkeypatch.setattr(trainer, "shutdown", lambda: calls.append("shutdown"))

    def fail(*args, **kwargs):
        raise FloatingPointError("loss is nan")

    monkeypatch.setattr(trainer, "_train", fail)
    with pytest.raises(FloatingPointError):
        trainer.train(build_config({}), "unused")
    monkeypatch.setattr(trainer, "_train", lambda *a, **k: {})
    trainer.train(build_config({}), "unused")
    assert calls == ["shutdown", "shutdown"]


def test_eval_ranks_exchange_per_video_scores_not_every_view(model_dir, monkeypatch):
    """Ranks send each video's merged scores (and hit counts), not every view's: a K400
    test has 15 views per video."""
    import mar.engine.evaluate as evaluate
    from mar.data import VideoRecord, view_loader
    from mar.inference import load_model

    model, cfg = load_model(model_dir, None, ["data.test_clips=2", "data.test_crops=3"])
    sent = []
    monkeypatch.setattr(evaluate, "all_gather_objects", lambda obj, info: sent.append(obj)
                        or [obj])
    videos = [REAL / "tree.avi", REAL / "Megamind.avi"]
    loader = view_loader(cfg.views_dataset([VideoRecord(str(v), i) for i, v in
                                            enumerate(videos)], 2, 3), 6)
    result = evaluate.evaluate(model, loader, cfg.test_masking(), CPU, 6)
    (obj,) = sent
    assert obj["scores"].shape == (2, 6) and obj["views"] == 12
    assert result.num_videos == 2 and result.num_views == 12


def test_eval_reduce_under_torchrun_counts_every_rank(model_dir, tmp_path):
    """`mar eval --reduce rlt` on 2 gloo processes reports the mean token count and
    GFLOPs of all the videos, as one process does, not rank 0's share."""
    listed = tmp_path / "test.csv"
    videos = [REAL / "tree.avi", REAL / "bigbuckbunny.mp4", REAL / "Megamind.avi"]
    listed.write_text("".join(f"{v} {i}\n" for i, v in enumerate(videos)))
    args = ["eval", "--checkpoint", str(model_dir), "--device", "cpu", "--reduce", "rlt",
            "--set", f"data.test_list={listed}", "--set", "data.test_clips=1",
            "--set", "data.test_crops=1", "--set", "data.num_workers=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "-m", "mar", *args, "--out", str(one)], check=True,
                   capture_output=True, env=env)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                           "2", "--master_port", "29531", "-m", "mar", *args, "--out",
                           str(two)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = (json.loads((d / "eval.json").read_text()) for d in (one, two))
    assert a["videos"] == b["videos"] == 3
    assert a["mean_tokens"] == b["mean_tokens"] and a["gflops_per_view"] == b["gflops_per_view"]


# --- loaders ---------------------------------------------------------------------------

def test_persistent_workers_still_change_the_augmentation_every_epoch(tiny_lists):
    """The training loader's worker outlives the epoch (forked once), and each epoch's
    clips are the ones a loader without workers gives for that epoch: the epoch reaches
    the worker with each index."""
    from mar.engine.loader import build_loader

    config = CONFIGS / "tiny_cpu.yaml"
    cfg = load_config(config, as_args(shrink(config, tiny_lists)))
    data = cfg.dataset("train")

    def epochs(workers):
        loader = build_loader(data, 4, CPU, workers=workers, seed=3)
        out, pids = [], set()
        for epoch in (0, 1):
            loader.sampler.set_epoch(epoch)
            it = iter(loader)
            out.append(next(it)["video"])
            pids |= {w.pid for w in getattr(it, "_workers", [])}
        return out, pids

    with_worker, pids = epochs(1)
    without, _ = epochs(0)
    assert len(pids) == 1                       # one worker process, both epochs
    assert not torch.equal(with_worker[0], with_worker[1])
    for a, b in zip(with_worker, without, strict=True):
        assert torch.equal(a, b)


# --- extract ---------------------------------------------------------------------------

def test_extract_packs_views_of_several_videos_into_full_calls(model_dir, tmp_path,
                                                               monkeypatch):
    from safetensors.torch import load_file

    import mar.inference.extract as extract

    sizes = []
    real = extract.score
    monkeypatch.setattr(extract, "score", lambda model, views, *a, **k: sizes.append(
        len(views)) or real(model, views, *a, **k))
    videos = [str(REAL / v) for v in ("tree.avi", "Megamind.avi", "bigbuckbunny.mp4")]
    common = ["--checkpoint", str(model_dir), "--clips", "2", "--crops", "1", "--workers", "0"]
    assert main(["extract", *videos, *common, "--out", str(tmp_path / "a"),
                 "--batch-size", "4"]) == 0
    assert sizes == [4, 4]                      # 6 views: one full call, one padded
    sizes.clear()
    assert main(["extract", videos[1], *common, "--out", str(tmp_path / "b"),
                 "--batch-size", "4"]) == 0
    name = extract.feature_name(videos[1])
    a = load_file(tmp_path / "a" / "features" / name)
    b = load_file(tmp_path / "b" / "features" / name)
    assert torch.allclose(a["features"], b["features"], atol=1e-6)


def test_extract_refuses_to_mix_devices_or_views_per_call(model_dir, tmp_path, capsys,
                                                          fake_gpu):
    video = str(REAL / "tree.avi")
    common = [video, "--checkpoint", str(model_dir), "--out", str(tmp_path), "--workers", "0",
              "--clips", "1", "--crops", "1"]
    assert main(["extract", *common, "--device", "cpu", "--batch-size", "2"]) == 0
    capsys.readouterr()
    assert main(["extract", *common, "--device", "cpu", "--batch-size", "3"]) == 2
    assert "views_per_call differ" in capsys.readouterr().err
    assert main(["extract", *common, "--device", "cuda", "--batch-size", "2"]) == 2
    assert "device differ" in capsys.readouterr().err


def test_extract_writes_the_same_bytes_every_time(tmp_path):
    """safetensors writes its metadata in a random order; ours is sorted, so the same
    features give the same file (and the format still reads back)."""
    from safetensors import safe_open

    from mar.inference.extract import save_features

    tensors = {"features": torch.arange(6.0).view(2, 3), "clip": torch.tensor([0, 1])}
    metadata = {"format": "f", "video": "v.mp4", "key": "k", "label": "3", "settings": "{}"}
    files = [save_features(tmp_path / f"{i}.safetensors", tensors, metadata)
             for i in range(6)]
    assert len({f.read_bytes() for f in files}) == 1
    with safe_open(str(files[0]), "pt") as f:
        assert f.metadata() == metadata and torch.equal(f.get_tensor("clip"), tensors["clip"])
