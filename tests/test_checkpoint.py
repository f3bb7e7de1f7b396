"""Checkpoints: exact resume, weights_only loading, keep-last/best, crash safety, errors."""

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mar import create_model
from mar.engine.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    prepare_run_dir,
    restore_rng,
    save_checkpoint,
)
from mar.engine.optim import build_optimizer
from mar.losses import mar_loss
from mar.masking import make_masking

TINY = dict(num_classes=5, num_frames=8, img_size=32, patch_size=8, decoder=True)
MASKING = make_masking("random", ratio=0.5)


def setup(seed=0, policy="paper", **kw):
    torch.manual_seed(seed)
    model = create_model("vit_nano", **{**TINY, "drop_path": 0.1, **kw})  # drop path: torch RNG
    opt = build_optimizer(model, 1e-3, policy=policy)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=1)
    return model.train(), opt, scaler


def train_step(model, opt, scaler) -> float:
    """One step that draws from torch's, NumPy's and Python's global RNGs."""
    video = torch.randn(2, 3, 8, 32, 32)
    seed = int(torch.randint(0, 2**31, ()))
    mask = MASKING(2, model.grid, train=True, generator=torch.Generator().manual_seed(seed))
    labels = torch.tensor([random.randrange(5), int(np.random.randint(5))])
    loss = mar_loss(model(video, mask), labels, rec_weight=0.1).total
    opt.zero_grad()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss.item()


def save(run, step, model, opt, scaler, **kw):
    kw = {"epoch": 0, "sampler_epoch": 0, "config": {"model": {"name": "vit_nano"}},
          "metrics": {}, **kw}
    return save_checkpoint(run, step, model, opt, scaler, **kw)


def test_resume_reproduces_parameters_optimizer_and_the_next_steps(tmp_path):
    model, opt, scaler = setup()
    train_step(model, opt, scaler)
    path = save(tmp_path, 1, model, opt, scaler)
    expected = [train_step(model, opt, scaler) for _ in range(2)]

    model2, opt2, scaler2 = setup(seed=123)
    state = load_checkpoint(latest_checkpoint(tmp_path), model2, opt2, scaler2)
    assert state["step"] == 1 and latest_checkpoint(tmp_path) == path
    restore_rng(state["rng"])
    assert scaler2.get_scale() == 2.0**9  # grown once, as saved
    one = opt2.state[opt2.param_groups[0]["params"][0]]
    assert int(one["step"]) == 1 and one["exp_avg"].abs().sum() > 0
    assert [train_step(model2, opt2, scaler2) for _ in range(2)] == expected
    for (name, a), b in zip(model.state_dict().items(), model2.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    # the RNG matters: without restoring it the same two steps differ
    model3, opt3, scaler3 = setup(seed=123)
    load_checkpoint(path, model3, opt3, scaler3)
    assert [train_step(model3, opt3, scaler3) for _ in range(2)] != expected


def test_files_load_with_weights_only(tmp_path):
    model, opt, scaler = setup()
    train_step(model, opt, scaler)
    path = save(tmp_path, 7, model, opt, scaler, epoch=2, sampler_epoch=3,
                metrics={"loss": np.float32(0.5), "top1": 12.5})
    assert path.name == "checkpoint-00000007"
    state = torch.load(path / "state.pt", weights_only=True)
    assert (state["step"], state["epoch"], state["sampler_epoch"]) == (7, 2, 3)
    assert state["config"] == {"model": {"name": "vit_nano"}}
    assert state["metrics"] == {"loss": 0.5, "top1": 12.5}
    assert type(state["metrics"]["loss"]) is float  # a NumPy scalar is stored as a float
    assert set(state["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert state["scaler"]["scale"] == 2.0**9 and state["optimizer"]["state"]
    weights = load_file(str(path / "model.safetensors"))
    assert weights.keys() == model.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_state_that_weights_only_would_refuse_is_an_error_before_writing(tmp_path):
    model, opt, scaler = setup()
    save(tmp_path, 1, model, opt, scaler)
    with pytest.raises(TypeError, match=r"state\['config'\]\['root'\].*PosixPath"):
        save(tmp_path, 2, model, opt, scaler, config={"root": Path("/data")})
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-00000001"]


def test_keep_last_deletes_the_oldest_and_best_is_kept(tmp_path):
    model, opt, scaler = setup()
    weight = model.head.head.weight
    for step, acc in [(1, 10.0), (2, 30.0), (3, 20.0), (4, float("nan")), (5, 25.0)]:
        with torch.no_grad():
            weight.fill_(step)
        save(tmp_path, step, model, opt, scaler, metrics={"acc": acc}, keep_last=2,
             best_metric=acc)
        kept = sorted(p.name for p in tmp_path.glob("checkpoint-*"))
        assert kept == [f"checkpoint-{s:08d}" for s in range(max(1, step - 1), step + 1)]
    best = torch.load(tmp_path / "best" / "state.pt", weights_only=True)
    assert best["step"] == 2 and best["best_metric"] == 30.0 and "optimizer" not in best
    assert load_file(str(tmp_path / "best" / "model.safetensors"))["head.head.weight"][0, 0] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        ["best", "checkpoint-00000004", "checkpoint-00000005"]
    # the best by a loss: lower is better
    for step, loss in [(6, 3.0), (7, 1.0), (8, 2.0)]:
        save(tmp_path / "loss", step, model, opt, scaler, best_metric=loss,
             higher_is_better=False)
    assert torch.load(tmp_path / "loss" / "best" / "state.pt", weights_only=True)["step"] == 7
    # best/ is for evaluation: no optimizer state to resume from
    with pytest.raises(ValueError, match="no optimizer state"):
        load_checkpoint(tmp_path / "best", setup()[0], setup()[1])
    assert load_checkpoint(tmp_path / "best", setup()[0])["best_metric"] == 30.0


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, opt, scaler = setup()
    first = save(tmp_path, 1, model, opt, scaler)

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(torch, "save", disk_full)
        with pytest.raises(OSError, match="disk full"):
            save(tmp_path, 2, model, opt, scaler)
    assert latest_checkpoint(tmp_path) == first
    assert [p.name for p in tmp_path.iterdir()] == [first.name]
    load_checkpoint(first, *setup())


def test_a_failed_rename_keeps_the_previous_checkpoint_and_best(tmp_path, monkeypatch):
    model, opt, scaler = setup()
    first = save(tmp_path, 1, model, opt, scaler, best_metric=1.0)
    rename = Path.rename

    def failing(self, target):
        if self.name.startswith(".tmp-"):
            raise OSError("rename failed")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", failing)
    with pytest.raises(OSError, match="rename failed"):
        save(tmp_path, 2, model, opt, scaler)
    assert latest_checkpoint(tmp_path) == first
    with pytest.raises(OSError, match="rename failed"):  # replacing best/ fails half way
        save(tmp_path, 1, model, opt, scaler, best_metric=2.0)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", first.name]
    best = torch.load(tmp_path / "best" / "state.pt", weights_only=True)
    assert best["best_metric"] == 1.0


def test_what_a_kill_leaves_is_ignored_then_cleaned_up(tmp_path):
    model, opt, scaler = setup()
    first = save(tmp_path, 1, model, opt, scaler, best_metric=1.0)
    # killed while writing step 9, and while swapping in a new best/
    shutil.copytree(first, tmp_path / ".tmp-checkpoint-00000009-0123abcd")
    (tmp_path / "best").rename(tmp_path / ".old-best")
    shutil.copytree(first, tmp_path / ".tmp-best-4567cdef")
    # and a directory that is not a complete checkpoint
    (tmp_path / "checkpoint-00000010").mkdir()
    (tmp_path / "checkpoint-00000010" / "model.safetensors").write_bytes(b"")
    assert latest_checkpoint(tmp_path) == first
    prepare_run_dir(tmp_path, resume=True, overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        ["best", first.name, "checkpoint-00000010"]
    assert torch.load(tmp_path / "best" / "state.pt", weights_only=True)["step"] == 1
    assert latest_checkpoint(tmp_path) == first


def test_a_mismatched_model_or_optimizer_names_the_keys_and_the_file(tmp_path):
    model, opt, scaler = setup()
    path = save(tmp_path, 1, model, opt, scaler)
    other = create_model("vit_nano", **{**TINY, "num_classes": 7})
    with pytest.raises(ValueError, match=r"model\.safetensors.*shape mismatch: head\.head\.wei"):
        load_checkpoint(path, other)
    deploy = create_model("vit_nano", **{**TINY, "decoder": False})
    with pytest.raises(ValueError, match=r"unexpected \d+ keys \(decoder\."):
        load_checkpoint(path, deploy)
    bigger = create_model("vit_nano", **TINY, head_mask_tokens=True)
    with pytest.raises(ValueError, match=r"missing 1 keys \(head\.mask_token"):
        load_checkpoint(path, bigger)
    fresh, official, _ = setup(policy="official")
    with pytest.raises(ValueError, match=r"state\.pt: optimizer group \d+ differs"):
        load_checkpoint(path, fresh, official)
    assert "\n" not in str(pytest.raises(ValueError, load_checkpoint, path, other).value)


def test_prepare_run_dir_never_reuses_a_non_empty_directory_unasked(tmp_path):
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)  # created
    model, opt, scaler = setup()
    save(run, 1, model, opt, scaler)
    with pytest.raises(FileExistsError, match="--resume auto.*--overwrite"):
        prepare_run_dir(run, resume=False, overwrite=False)
    prepare_run_dir(run, resume=True, overwrite=False)
    assert latest_checkpoint(run) is not None
    with pytest.raises(ValueError, match="contradict"):
        prepare_run_dir(run, resume=True, overwrite=True)
    prepare_run_dir(run, resume=False, overwrite=True)
    assert run.is_dir() and not any(run.iterdir())
    # --overwrite deletes a run, not whatever directory it is pointed at
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="holds no mar run"):
        prepare_run_dir(tmp_path / "mine", resume=False, overwrite=True)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
