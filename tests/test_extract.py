"""``mar extract``: pooled features equal the model's, masking recorded, bad videos
reported, a SIGKILLed run resumes to the same outputs, 2 gloo processes = 1 process."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL, make_model_dir
from safetensors import safe_open
from safetensors.torch import load_file
from videos import corrupt, write_video

from mar.cli import main as mar_main
from mar.inference import load_model
from mar.inference.extract import feature_name

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def main(args: list[str]) -> int:
    return mar_main(["extract", *args])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random tiny MAR model directory (token grid 2 x 4 x 4: 32 tokens), recorded as
    tested at cell running 50 %."""
    return make_model_dir(tmp_path_factory.mktemp("extract-model") / "mar", TINY_MODEL,
                          class_names=False)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Six small H.264 videos in nested folders, two of them named so that a naive
    flattening of the path would collide (``a/b.mp4`` and ``a_b.mp4``)."""
    root = tmp_path_factory.mktemp("extract-videos")
    names = ["a/b.mp4", "a_b.mp4", "c/d/e.mp4", "f.mp4", "g.mp4", "h.mp4"]
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        write_video(root / name, num_frames=20 + 3 * i, size=(48, 40))
    return root


@contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "mar", "extract", *map(str, args)]


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def outputs(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: load_file(p) for p in sorted((out / "features").glob("*.safetensors"))}


def test_features_are_the_encoder_tokens_that_predict_classifies(model_dir, videos, tmp_path,
                                                                 capsys):
    """The saved tokens, put through the model's head, give `mar predict`'s probabilities
    for the same video and views (another command, its own loader): extraction used the
    same views, the same test-time mask and the same encoder pass; the features are the
    tokens' mean and the token ids the mask's visible tokens."""
    from mar.inference import predict

    out = tmp_path / "out"
    assert main([str(videos), "--checkpoint", str(model_dir), "--out", str(out), "--tokens",
                 "--clips", "2", "--crops", "3", "--batch-size", "6", "--workers", "0"]) == 0
    assert "6 of 6 videos extracted (2 x 3 views each)" in capsys.readouterr().err
    model, cfg = load_model(model_dir, None, ["data.test_clips=2", "data.test_crops=3"])
    m = manifest(out)
    assert m["complete"] and m["summary"] == {"videos": 6, "ok": 6, "errors": 0, "reused": 0}
    names = {r["key"]: r["file"] for r in m["videos"]}
    assert len(set(names.values())) == 6            # a/b.mp4 and a_b.mp4 kept apart
    masking = cfg.test_masking()
    mask = masking(6, model.grid, train=False)
    assert mask.num_visible == 16
    predicted = predict(model, cfg, [Path(r["video"]) for r in m["videos"]], masking,
                        topk=4, workers=0)
    for record, pred in zip(m["videos"], predicted, strict=True):
        assert record["status"] == "ok" and record["views"] == 6
        data = load_file(out / record["file"])
        tokens = data["tokens"]
        assert tokens.shape == (6, 16, 64)
        assert torch.allclose(data["features"], tokens.mean(1), atol=1e-6)
        assert torch.equal(data["token_ids"], mask.ids_keep[0])
        with torch.no_grad():
            probs = model.forward_head(tokens, mask).softmax(-1).mean(0)
        assert torch.allclose(probs[pred.classes], torch.tensor(pred.probs), atol=1e-5)
        assert data["clip"].tolist() == [0, 0, 0, 1, 1, 1]
        assert data["crop"].tolist() == [0, 1, 2, 0, 1, 2]
        with safe_open(str(out / record["file"]), "pt") as f:
            meta = f.metadata()
        assert meta["video"] == record["video"] and json.loads(meta["settings"]) == m["settings"]
    # the features of a video do not depend on how its views are batched
    other = tmp_path / "batched"
    assert main([str(videos / "f.mp4"), "--checkpoint", str(model_dir), "--out", str(other),
                 "--clips", "2", "--crops", "3", "--batch-size", "4", "--workers", "0"]) == 0
    (a,) = outputs(other).values()
    b = load_file(out / names[str(videos / "f.mp4")[len(str(videos)) + 1:]])
    assert torch.allclose(a["features"], b["features"], atol=1e-6)


@pytest.mark.parametrize("option, name, ratio, origin, visible", [
    ([], "cell_running", 0.5, "checkpoint", 16),
    (["--mask-ratio", "0.75"], "cell_running", 0.75, "--mask-ratio", 8),
    (["--all-tokens"], "none", 0.0, "--all-tokens", 32),
])
def test_masking_is_applied_and_recorded(model_dir, videos, tmp_path, capsys, option, name,
                                         ratio, origin, visible):
    out = tmp_path / "out"
    args = [str(videos / "f.mp4"), "--checkpoint", str(model_dir), "--out", str(out),
            "--tokens", "--clips", "1", "--crops", "1", "--workers", "0"]
    assert main(args + option) == 0
    masking = manifest(out)["settings"]["masking"]
    assert masking == {"name": name, "ratio": ratio, "from": origin,
                       "visible_tokens": visible, "tokens": 32}
    (data,) = outputs(out).values()
    assert data["tokens"].shape == (1, visible, 64) and data["token_ids"].shape == (visible,)
    # another masking into the same folder is refused, not mixed in
    capsys.readouterr()
    assert main(args + ["--mask-ratio", "0.25"]) == 2
    assert "other settings (masking differ); use another --out" in capsys.readouterr().err
    assert len(outputs(out)) == 1


def test_a_bad_video_is_reported_and_the_rest_extracted(model_dir, videos, tmp_path, capsys):
    bad = corrupt(videos / "f.mp4", tmp_path / "bad.mp4", "not_video")
    empty = corrupt(videos / "f.mp4", tmp_path / "empty.mp4", "empty")
    listing = tmp_path / "list.csv"
    listing.write_text(f"{videos / 'f.mp4'} 3\n{bad} 1\n{videos / 'g.mp4'} 2\n{empty} 0\n")
    out = tmp_path / "out"
    args = [str(listing), "--checkpoint", str(model_dir), "--out", str(out), "--clips", "1",
            "--crops", "2", "--workers", "1"]            # decoding in a loader worker
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"error: {bad}: cannot open as video" in err
    assert f"error: {empty}: empty file" in err
    assert "2 of 4 videos extracted" in err
    m = manifest(out)
    assert [(r["label"], r["status"], r["views"]) for r in m["videos"]] == [
        (3, "ok", 2), (1, "error", 0), (2, "ok", 2), (0, "error", 0)]
    assert m["summary"] == {"videos": 4, "ok": 2, "errors": 2, "reused": 0}
    assert len(outputs(out)) == 2
    # a rerun keeps what was done and tries the bad videos again
    assert main(args) == 1
    assert "2 already extracted, 2 to do" in capsys.readouterr().err
    assert manifest(out)["summary"] == {"videos": 4, "ok": 2, "errors": 2, "reused": 2}


def test_a_killed_run_resumes_to_the_same_outputs(model_dir, videos, tmp_path):
    args = [videos, "--checkpoint", model_dir, "--clips", "4", "--crops", "3", "--tokens",
            "--workers", "0"]
    whole = tmp_path / "whole"
    with one_thread():                      # as the subprocesses (OMP_NUM_THREADS=1)
        assert main([*map(str, args), "--out", str(whole)]) == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen(cli(*args, "--out", out), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.monotonic() + 120
    while not list((out / "features").glob("*.safetensors")) and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    done = outputs(out)                   # every file there loads: none is half-written
    assert 1 <= len(done) < 6, "the run was not killed mid-way"
    assert not manifest(out)["complete"]
    proc = subprocess.run(cli(*args, "--out", out), capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert f"{len(done)} already extracted, {6 - len(done)} to do" in proc.stderr
    assert manifest(out)["summary"]["reused"] == len(done)
    assert not list((out / "features").glob(".tmp-*"))
    a, b = outputs(whole), outputs(out)
    assert a.keys() == b.keys() and len(a) == 6
    for name in a:
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)
    resumed = manifest(out)["videos"]
    assert sorted(r["file"][len("features/"):] for r in resumed if r["reused"]) == sorted(done)

    def without_reused(records):
        return [{k: v for k, v in r.items() if k != "reused"} for r in records]

    assert without_reused(manifest(whole)["videos"]) == without_reused(resumed)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_extract_like_one(model_dir, videos, tmp_path):
    bad = corrupt(videos / "f.mp4", tmp_path / "bad.mp4", "truncated")
    args = [videos, bad, "--checkpoint", model_dir, "--clips", "2", "--crops", "2",
            "--batch-size", "3", "--workers", "0"]
    one, two = tmp_path / "one", tmp_path / "two"
    with one_thread():                      # as the subprocesses (OMP_NUM_THREADS=1)
        assert main([*map(str, args), "--out", str(one)]) == 1     # the truncated file
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(free_port()), *cli(*args, "--out", two)[1:]],
        capture_output=True, text=True, env=ENV)
    assert proc.returncode == 1, proc.stderr[-3000:]   # torchrun passes the exit code on
    assert proc.stderr.count("6 of 7 videos extracted") == 1     # rank 0 reports
    a, b = manifest(one), manifest(two)
    assert a["processes"] == 1 and b["processes"] == 2
    assert a["videos"] == b["videos"] and len(a["videos"]) == 7
    assert [r["status"] for r in b["videos"]] == ["ok"] * 6 + ["error"]
    assert not list(two.glob(".manifest-rank*"))
    x, y = outputs(one), outputs(two)
    assert x.keys() == y.keys() and len(x) == 6
    for name in x:
        for key in x[name]:
            assert torch.equal(x[name][key], y[name][key]), (name, key)


def test_feature_names_are_file_safe_and_distinct():
    keys = ["a/b.mp4", "a_b.mp4", "a b.mp4", "ä/b.mp4", "../x.mp4", "x" * 300 + ".mp4",
            "y" * 300 + ".mp4"]
    names = [feature_name(k) for k in keys]
    assert len(set(names)) == len(keys)
    for n in names:
        assert "/" not in n and not n.startswith(".") and len(n) <= 110
        assert n.endswith(".safetensors")
    assert feature_name("a/b.mp4") == feature_name("a/b.mp4")


def test_bad_arguments_are_one_line_errors(model_dir, videos, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(tmp_path / "missing"), "--checkpoint", str(model_dir),
                 "--out", str(out)]) == 2
    assert "missing: no such file or folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:           # argparse: usage and one line, exit 2
        main([str(videos), "--checkpoint", str(model_dir), "--out", str(out), "--clips", "0"])
    assert e.value.code == 2 and "--clips: must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(videos), "--checkpoint", str(model_dir), "--out", str(out),
              "--mask-ratio", "0.5", "--all-tokens"])


def test_a_reused_file_must_match_the_settings(model_dir, videos, tmp_path, capsys):
    """Without the manifest (deleted by hand), each kept file's own record of its settings
    still stops features of other settings from being passed off as this run's."""
    out = tmp_path / "out"
    args = [str(videos / "f.mp4"), str(videos / "g.mp4"), "--checkpoint", str(model_dir),
            "--out", str(out), "--clips", "1", "--crops", "1", "--workers", "0"]
    assert main(args) == 0
    (out / "manifest.json").unlink()
    first, second = sorted((out / "features").glob("*.safetensors"))
    second.write_bytes(b"damaged")
    capsys.readouterr()
    assert main(args + ["--mask-ratio", "0.75"]) == 1
    err = capsys.readouterr().err
    assert f"error: {first}: made with other settings; delete it" in err
    assert f"error: {second}: existing output unreadable" in err
    assert manifest(out)["summary"] == {"videos": 2, "ok": 0, "errors": 2, "reused": 2}
