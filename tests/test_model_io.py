"""Model I/O: one loader for runs, checkpoints and model directories; atomic saves."""

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL, as_args, shrink

from mar import create_model
from mar.cli import main
from mar.inference import load_model
from mar.models.io import ModelFileError, load_model_dir, save_model, weights_file

KWARGS = TINY_MODEL
NONE = {"name": "none", "ratio": 0.0}


def test_a_failed_swap_keeps_the_old_model(tmp_path, monkeypatch):
    path = tmp_path / "model"
    torch.manual_seed(0)
    old = create_model(**KWARGS)
    save_model(old, KWARGS, path, masking=NONE)
    new = create_model(**KWARGS)
    real_rename = Path.rename

    def failing_rename(self, target):
        if Path(target) == path and self.name.startswith(".tmp-"):   # new for old
            raise OSError("disk full")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(OSError, match="disk full"):
        save_model(new, KWARGS, path, masking=NONE, overwrite=True)
    monkeypatch.undo()
    loaded, _ = load_model_dir(path)
    for key, value in old.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]   # nothing left over


def test_save_model_requires_a_masking_record(tmp_path):
    with pytest.raises(ModelFileError, match="masking"):
        save_model(create_model(**KWARGS), KWARGS, tmp_path / "m", masking=None)
    assert not (tmp_path / "m").exists()


def test_weights_of_a_run_are_its_best_else_its_newest_checkpoint(tmp_path):
    run = tmp_path / "run"
    for name in ("checkpoint-00000002", "checkpoint-00000010"):
        (run / name).mkdir(parents=True)
        (run / name / "model.safetensors").write_bytes(b"")
    assert weights_file(run) == run / "checkpoint-00000010" / "model.safetensors"
    (run / "best").mkdir()
    (run / "best" / "model.safetensors").write_bytes(b"")
    assert weights_file(run) == run / "best" / "model.safetensors"
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        weights_file(tmp_path)


def test_mar_eval_uses_eval_masking(tiny_lists, tmp_path, capsys):
    """A MAR run (decoder included) evaluated by `mar eval` on the run folder itself, with
    its own test masking and with ``eval_masking`` overridden to all tokens."""
    config = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"
    overrides = shrink(config, tiny_lists, steps=2)
    run = tmp_path / "run"
    assert main(["train", str(config), *as_args(overrides), "--out", str(run)]) == 0
    assert load_model(run)[0].decoder is not None           # training added the decoder
    results = {}
    for name, extra in (("own", []), ("all", ["eval_masking.name=none",
                                              "eval_masking.ratio=0"])):
        capsys.readouterr()
        out = tmp_path / name
        assert main(["eval", *extra, "--checkpoint", str(run), "--out", str(out)]) == 0
        results[name] = (capsys.readouterr().out,
                         json.loads((out / "eval.json").read_text()))
    assert "test-time masking: cell_running 50% (16 of 32 tokens visible)" in results["own"][0]
    assert "test-time masking: none (32 of 32 tokens visible)" in results["all"][0]
    # the run's own test top-1 (its summary) is the one `mar eval` reproduces
    summary = json.loads((run / "summary.json").read_text())
    assert results["own"][1]["video_top1"] == pytest.approx(summary["test_video_top1"])


def test_every_checkpoint_carries_its_settings_and_loads_without_unpickling(
        tiny_lists, tmp_path, monkeypatch):
    """Each checkpoint folder holds config.yaml and masking.json beside the weights, and
    `load_model` reads them: state.pt (optimizer moments, RNG states) is never opened."""
    import yaml

    config = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"
    run = tmp_path / "run"
    assert main(["train", str(config), *as_args(shrink(config, tiny_lists, steps=2)),
                 "--out", str(run)]) == 0
    checkpoints = [*run.glob("checkpoint-*"), run / "best"]
    assert len(checkpoints) >= 2
    saved = yaml.safe_load((run / "config.yaml").read_text())
    for folder in checkpoints:
        assert yaml.safe_load((folder / "config.yaml").read_text()) == saved
        assert json.loads((folder / "masking.json").read_text()) == saved["masking"]

    def refuse(*args, **kwargs):
        raise AssertionError("load_model unpickled state.pt")

    monkeypatch.setattr(torch, "load", refuse)
    for folder in checkpoints:
        model, cfg = load_model(folder)
        assert cfg.masking.name == saved["masking"]["name"] and model.decoder is not None
    monkeypatch.undo()
    # a checkpoint written before these files existed: its config comes from state.pt
    old = checkpoints[0]
    (old / "config.yaml").unlink()
    (run / "config.yaml").unlink()
    assert load_model(old)[1].masking.name == saved["masking"]["name"]


def test_a_decoder_of_another_size_is_refused_with_its_size(tmp_path):
    """Fine-tuning from a pretraining run whose decoder differs from the config's: the
    one-line error says what the checkpoint's decoder is, so the user can match it."""
    from safetensors.torch import save_file

    from mar.models.io import load_weights

    wide = create_model(**KWARGS, head="none", decoder=True, decoder_dim=64, decoder_depth=2,
                        decoder_heads=2)
    save_file(wide.state_dict(), str(tmp_path / "model.safetensors"))
    ours = create_model(**KWARGS, decoder=True)
    with pytest.raises(ModelFileError, match="its decoder is 64 wide and 2 deep: set "
                       "model.decoder_dim"):
        load_weights(ours, tmp_path / "model.safetensors", allow_missing=("head.",),
                     allow_unused=("decoder.",))
    matched = create_model(**KWARGS, decoder=True, decoder_dim=64, decoder_depth=2,
                           decoder_heads=2)
    fresh = load_weights(matched, tmp_path / "model.safetensors", allow_missing=("head.",),
                         allow_unused=("decoder.",))
    assert fresh and all(k.startswith("head.") for k in fresh)


@pytest.mark.parametrize("head", ["bridging", "linear"])
def test_a_loaded_model_computes_what_the_saved_one_did(tmp_path, head):
    """load_model builds on the meta device and takes the file's tensors; the position
    tables (not saved) are recomputed, so the outputs are the saved model's exactly."""
    kwargs = {**KWARGS, "head": head, "head_pos_embed": head == "bridging",
              "decoder": True}
    torch.manual_seed(0)
    model = create_model(**kwargs).eval()
    save_model(model, kwargs, tmp_path / "m", masking=NONE)
    loaded, _ = load_model_dir(tmp_path / "m")
    tensors = [*loaded.parameters(), *loaded.buffers()]
    assert not any(t.is_meta for t in tensors)
    assert all(p.requires_grad for p in loaded.parameters())
    buffers = dict(model.named_buffers())
    for name, value in loaded.named_buffers():
        assert torch.equal(value, buffers[name]), name
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(video, None).logits, model(video, None).logits)
