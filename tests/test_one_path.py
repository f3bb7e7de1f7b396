"""One way to do each job: `mar eval` and `mar predict` agree on the same videos; every
command that runs a model puts it, and every batch, on `--device` (checked on a CPU with
a recording fake GPU); a device this machine lacks is a one-line error."""

from __future__ import annotations

import json

import pytest
import torch
from videos import REAL

from mar.cli import main

VIDEOS = [REAL / "tree.avi", REAL / "bigbuckbunny.mp4", REAL / "Megamind.avi"]
VIEWS = ["--set", "data.test_clips=2", "--set", "data.test_crops=3"]


def test_eval_and_predict_give_the_same_probabilities_on_real_videos(model_dir, tmp_path,
                                                                     monkeypatch, capsys):
    import mar.engine.evaluate as evaluate

    listed = tmp_path / "test.csv"
    listed.write_text("".join(f"{v} {i}\n" for i, v in enumerate(VIDEOS)))
    merged = []
    real_merge = evaluate.merge_views

    def spy(*args, **kwargs):
        merged.append(real_merge(*args, **kwargs))
        return merged[-1]

    monkeypatch.setattr(evaluate, "merge_views", spy)
    assert main(["eval", "--checkpoint", str(model_dir), "--device", "cpu", *VIEWS,
                 "--set", f"data.test_list={listed}", "--set", "data.num_workers=0",
                 "--set", "eval.batch_size=4"]) == 0
    (scores, _, ids), = merged
    assert ids.tolist() == [0, 1, 2]
    capsys.readouterr()
    assert main(["predict", *map(str, VIDEOS), "--checkpoint", str(model_dir), "--json",
                 "--topk", "6", "--device", "cpu", *VIEWS]) == 0
    predicted = json.loads(capsys.readouterr().out)
    for row, result in zip(scores, predicted, strict=True):
        assert result["views"] == 6
        probs = torch.tensor([t["prob"] for t in result["top"]])
        classes = [t["class"] for t in result["top"]]
        assert torch.allclose(row[classes], probs, atol=1e-5), (result["video"], row, probs)


def _predict(model_dir, *extra):
    return main(["predict", str(REAL / "tree.avi"), str(REAL / "bigbuckbunny.mp4"),
                 "--checkpoint", str(model_dir), "--json", "--batch-size", "2", *VIEWS,
                 *extra])


@pytest.mark.parametrize("flag, expected", [(["--device", "cuda"], "cuda"),
                                            (["--device", "cuda:0"], "cuda:0"),
                                            ([], "cuda")])        # auto: the GPU
def test_predict_puts_the_model_and_every_batch_on_the_device(model_dir, fake_gpu, capsys,
                                                              flag, expected):
    import mar.runtime.device  # noqa: F401  (patched by the fixture)

    assert _predict(model_dir, *flag) == 0
    assert ("MAR", expected) in fake_gpu                     # the model went there
    batches = [m for m in fake_gpu if m[0] == "tensor"]
    # 2 videos x 6 views in calls of 2: 6 calls, each moving the views and the mask
    assert len(batches) >= 6 * 2, fake_gpu
    assert len(json.loads(capsys.readouterr().out)) == 2


def test_predict_on_the_cpu_moves_nothing_to_the_gpu(model_dir, fake_gpu, capsys):
    assert _predict(model_dir, "--device", "cpu") == 0
    assert fake_gpu == []


def test_eval_and_extract_put_the_model_and_batches_on_the_device(model_dir, fake_gpu,
                                                                  tmp_path):
    listed = tmp_path / "test.csv"
    listed.write_text(f"{REAL / 'tree.avi'} 0\n")
    assert main(["eval", "--checkpoint", str(model_dir), "--device", "cuda", *VIEWS,
                 "--set", f"data.test_list={listed}", "--set", "data.num_workers=0"]) == 0
    assert ("MAR", "cuda:0") in fake_gpu and ("tensor", "cuda:0") in fake_gpu
    fake_gpu.clear()
    assert main(["extract", str(listed), "--checkpoint", str(model_dir), "--device", "cuda",
                 "--out", str(tmp_path / "features"), "--workers", "0"]) == 0
    assert ("MAR", "cuda:0") in fake_gpu and ("tensor", "cuda:0") in fake_gpu
    settings = json.loads((tmp_path / "features" / "manifest.json").read_text())["settings"]
    assert settings["device"] == "cuda" and settings["views_per_call"] == 16


@pytest.mark.parametrize("command", [
    ["predict", str(REAL / "tree.avi")], ["eval"], ["export", "--out", "x.onnx"],
    ["extract", str(REAL / "tree.avi"), "--out", "feats"], ["visualize", str(REAL / "tree.avi"),
                                                            "--out", "pictures"]])
def test_a_device_this_machine_lacks_is_a_one_line_error(model_dir, tmp_path, monkeypatch,
                                                         capsys, command):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([*command, "--checkpoint", str(model_dir), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA GPU" in err[0] and err[0].startswith(f"mar {command[0]}")
    assert list(tmp_path.iterdir()) == []                   # nothing written


def test_train_on_a_device_this_machine_lacks_writes_nothing(tiny_lists, tmp_path,
                                                             monkeypatch, capsys):
    from conftest import CONFIGS, as_args, shrink

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = CONFIGS / "tiny_cpu.yaml"
    out = tmp_path / "run"
    assert main(["train", str(config), *as_args(shrink(config, tiny_lists)), "--out", str(out),
                 "--device", "cuda:1"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err and not out.exists()


def test_the_server_puts_the_model_and_every_batch_on_the_device(model_dir, fake_gpu):
    from mar.serve.predictor import ServedModel

    served = ServedModel(model_dir, device="cuda", overrides=["data.test_clips=1",
                                                              "data.test_crops=1"])
    assert ("MAR", "cuda") in fake_gpu
    fake_gpu.clear()
    probs = served.scores(served.decode(REAL / "tree.avi", max_frames=10_000).views)
    assert probs.shape == (1, 6) and probs.device.type == "cpu"
    assert fake_gpu.count(("tensor", "cuda")) >= 2          # the views and the mask


def test_the_readme_python_api_runs_as_written_and_agrees_with_predict(model_dir, capsys,
                                                                       monkeypatch):
    """README.md's Python block, with its run folder and clip replaced by a model and a
    real video (and ViT-B by vit_nano): its probabilities are `mar predict`'s."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert "runs/ssv2_b_mar50/best" in code and "clip.mp4" in code and "vit_base" in code
    code = (code.replace("runs/ssv2_b_mar50/best", str(model_dir))
            .replace("clip.mp4", str(REAL / "tree.avi"))
            .replace('"vit_base"', '"vit_nano"'))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["logits"].shape == (2, 174)
    probs = scope["probs"]
    assert main(["predict", str(REAL / "tree.avi"), "--checkpoint", str(model_dir), "--json",
                 "--topk", "6", "--device", "cpu", *VIEWS]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    for top in result["top"]:
        assert abs(probs[top["class"]].item() - top["prob"]) < 1e-5
