"""predict / export / visualize end to end on the real test videos with a tiny model."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import MODEL
from PIL import Image
from safetensors.torch import save_file
from videos import REAL

from mar import create_model, make_masking
from mar.data import make_backend
from mar.inference import MaskedClassifier, export_onnx, load_model
from mar.models.io import save_model

KWARGS = MODEL


def test_a_model_directory_runs_with_its_recorded_masking(model_dir, tmp_path):
    _, cfg = load_model(model_dir)
    assert cfg.test_masking().name == "cell_running" and cfg.test_masking().ratio == 0.5
    full = tmp_path / "full"                      # a classifier trained on all tokens
    save_model(load_model(model_dir)[0], KWARGS, full, masking={"name": "none", "ratio": 0.0})
    model, cfg = load_model(full)
    mask = cfg.test_masking()(1, model.grid, train=False)
    assert mask.num_masked == 0
    out = run("predict", str(REAL / "tree.avi"), "--checkpoint", str(full), "--json",
              "--set", "data.test_clips=1", "--set", "data.test_crops=1")
    assert out.returncode == 0, out.stderr
    assert "test-time masking: none (64 of 64 tokens visible)" in out.stderr


def test_a_model_directory_without_a_masking_record_runs_on_all_tokens(tmp_path, capsys):
    legacy = tmp_path / "legacy"                  # written before masking.json existed
    legacy.mkdir()
    save_file(create_model(**KWARGS).state_dict(), str(legacy / "model.safetensors"))
    (legacy / "config.json").write_text(json.dumps(KWARGS))
    model, cfg = load_model(legacy)
    assert cfg.test_masking()(1, model.grid, train=False).num_masked == 0
    assert "no masking.json; using all tokens" in capsys.readouterr().err


def run(*args):
    return subprocess.run([sys.executable, "-m", "mar", *args], capture_output=True,
                          text=True)


def test_load_model_rebuilds_the_saved_model(model_dir):
    model, cfg = load_model(model_dir)
    assert cfg.model.num_classes == 6 and model.decoder is not None
    ref = create_model(**KWARGS)
    ref.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 8, 64, 64)
    mask = make_masking("cell_running", 0.5)(1, model.grid, train=False)
    assert torch.equal(model(x, mask).logits, ref.eval()(x, mask).logits)


def test_predict_on_real_videos_and_a_folder(model_dir, tmp_path):
    out = run("predict", str(REAL / "bigbuckbunny.mp4"), str(REAL / "tree.avi"),
              "--checkpoint", str(model_dir), "--class-names", str(model_dir / "classes.txt"),
              "--topk", "3", "--json", "--set", "data.test_clips=2")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["video"].split("/")[-1] for r in rows] == ["bigbuckbunny.mp4", "tree.avi"]
    for r in rows:
        probs = [t["prob"] for t in r["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1
        assert r["top"][0]["name"].startswith("class ")
    folder = run("predict", str(REAL), "--checkpoint", str(model_dir), "--json",
                 "--set", "data.test_clips=1", "--set", "data.test_crops=1")
    # the folder holds 4 videos; every one decodes
    assert folder.returncode == 0 and len(json.loads(folder.stdout)) == 4
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    broken = run("predict", str(bad), "--checkpoint", str(model_dir), "--json")
    assert broken.returncode == 1 and json.loads(broken.stdout)[0]["error"]


@pytest.mark.parametrize("instructions, note", [([], True), (["amx_bf16"], False),
                                                (None, False)])
def test_predict_in_bf16_agrees_with_fp32_and_says_when_bf16_is_emulated(
        model_dir, capsys, monkeypatch, instructions, note):
    import mar.runtime.device
    from mar.cli import main

    monkeypatch.setattr(mar.runtime.device, "cpu_bf16_instructions", lambda: instructions)
    args = ["predict", str(REAL / "tree.avi"), str(REAL / "bigbuckbunny.mp4"), "--checkpoint",
            str(model_dir), "--json", "--topk", "6", "--set", "data.test_clips=1", "--set",
            "data.test_crops=2"]
    results = {}
    for dtype in ("none", "bf16"):
        assert main(args + ["--amp", dtype]) == 0
        out = capsys.readouterr()
        assert ("no bf16 instructions" in out.err) == (note and dtype == "bf16")
        results[dtype] = [{t["class"]: t["prob"] for t in r["top"]}
                          for r in json.loads(out.out)]
    for fp32, bf16 in zip(results["none"], results["bf16"], strict=True):
        assert fp32.keys() == bf16.keys()
        assert max(abs(fp32[c] - bf16[c]) for c in fp32) < 0.02
        assert fp32 != bf16                        # bf16 really ran


def test_predict_runs_a_videos_views_in_calls_of_batch_size_views(model_dir, monkeypatch):
    from mar.inference import predict
    from mar.runtime.device import default_views_per_call

    model, cfg = load_model(model_dir, None, ["data.test_clips=2", "data.test_crops=3"])
    calls = []
    forward = model.forward_features

    def counted(x, mask):
        calls.append(x.shape[0])
        return forward(x, mask)

    monkeypatch.setattr(model, "forward_features", counted)
    videos = [REAL / "tree.avi", REAL / "bigbuckbunny.mp4"]
    masking = cfg.test_masking()
    split = predict(model, cfg, videos, masking, topk=6, views_per_call=4, workers=0)
    assert calls == [4, 2, 4, 2]                  # 6 views per video, at most 4 per call
    calls.clear()
    whole = predict(model, cfg, videos, masking, topk=6, views_per_call=12, workers=0)
    assert calls == [12]                          # both videos' views in one call
    assert default_views_per_call(torch.device("cpu")) == 4
    calls.clear()
    predict(model, cfg, videos, masking, topk=6, workers=0)
    assert calls == [4, 2, 4, 2]                  # the CPU default
    for a, b in zip(split, whole, strict=True):
        assert a.views == b.views == 6 and a.classes == b.classes
        assert np.allclose(a.probs, b.probs, atol=1e-5)


def test_a_predict_command_imports_only_what_it_uses(model_dir):
    """Predicting with a model directory needs torch and a decoder, not timm, torchvision
    or torch._dynamo (together ~2 s of every command's start-up)."""
    code = ("import sys\nfrom mar.cli import main\n"
            f"main(['predict', {str(REAL / 'tree.avi')!r}, '--checkpoint', {str(model_dir)!r}, "
            "'--json', '--set', 'data.test_clips=1', '--set', 'data.test_crops=1'])\n"
            "unused = sorted(m for m in ('timm', 'torchvision', 'torch._dynamo') "
            "if m in sys.modules)\n"
            "print('unused:', unused, 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "unused: [] True" in out.stdout, out.stdout[-500:] + out.stderr[-2000:]


def test_predict_errors(model_dir, tmp_path):
    out = run("predict", str(tmp_path / "nothing.mp4"), "--checkpoint", str(model_dir))
    assert out.returncode == 2 and "no such file" in out.stderr
    out = run("predict", str(REAL / "tree.avi"), "--checkpoint", str(tmp_path))
    assert out.returncode == 2 and "no model.safetensors" in out.stderr
    out = run("predict", str(REAL / "tree.avi"), "--checkpoint", str(model_dir),
              "--batch-size", "0")
    assert out.returncode == 2 and "--batch-size: must be >= 1, got 0" in out.stderr


def test_onnx_export_matches_pytorch_with_a_dynamic_batch(model_dir, tmp_path):
    import onnxruntime as ort

    path = tmp_path / "mar.onnx"
    out = run("export", "--checkpoint", str(model_dir), "--out", str(path),
              "--mask-ratio", "0.5")
    assert out.returncode == 0, out.stderr
    assert "32 of 64 tokens visible" in out.stdout
    model, _ = load_model(model_dir)
    session = ort.InferenceSession(str(path))
    mask = make_masking("cell_running", 0.5)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 8, 64, 64)
        ref = model.forward_head(model.forward_features(x, m := mask(batch, model.grid,
                                                                     train=False)), m)
        got = session.run(None, {"video": x.numpy()})[0]
        assert got.shape == (batch, 6)
        assert np.abs(got - ref.detach().numpy()).max() < 1e-4


def test_masked_classifier_is_the_deploy_path():
    model = create_model("vit_nano", num_classes=3, num_frames=8, img_size=32,
                         patch_size=8).eval()
    mask = make_masking("cell_running", 0.75)(1, model.grid, train=False)
    wrapper = MaskedClassifier(model, mask)
    x = torch.randn(2, 3, 8, 32, 32)
    full = make_masking("cell_running", 0.75)(2, model.grid, train=False)
    assert torch.allclose(wrapper(x), model.classify(x, full))
    with pytest.raises(ValueError, match="does not tile"):
        export_onnx(create_model("vit_nano", num_classes=3, num_frames=8, img_size=32,
                                 patch_size=8), make_masking("cell_running", 0.5, cell=(3, 3)),
                    "/tmp/never.onnx")


def test_visualize_masks_and_reconstruction(model_dir, tmp_path):
    out = run("visualize", str(REAL / "bigbuckbunny.mp4"), "--checkpoint", str(model_dir),
              "--masks", "cell_running", "tube", "random", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    masks = Image.open(tmp_path / "masks.png")
    assert masks.size[0] > 500 and masks.size[1] > 200
    rec = Image.open(tmp_path / "reconstruction.png")
    assert rec.size[0] > 300
    info = make_backend("pyav").probe(tmp_path / "reconstruction.mp4")
    assert info.num_frames == 8 and info.width == 3 * 64
    none = run("visualize", "--out", str(tmp_path))
    assert none.returncode == 2 and "nothing to draw" in none.stderr
