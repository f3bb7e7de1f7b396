"""Sharded datasets: `mar data shard` (deterministic, resumable, bad videos reported), the
training streams (K samples each, round-robin batches, exact resume), evaluation (every
sample once, the list's predictions), torchrun, bad members and bad shard names."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import pytest
import test_real_settings as real
import torch
from conftest import ROOT, as_args, shrink
from videos import REAL, corrupt, write_video

from mar.cli import main
from mar.config import load_config
from mar.data import VideoBytes, make_backend, view_loader
from mar.data.decode import DecodeError
from mar.data.shards import expand_braces, parse_size, read_shard, shard_urls, write_shards
from mar.engine.evaluate import eval_loader, predict_views, run_eval
from mar.engine.loader import build_loader
from mar.runtime.distributed import DistInfo

TINY = ROOT / "configs" / "tiny_cpu.yaml"
CPU = DistInfo(0, 1, 0, torch.device("cpu"))


@pytest.fixture(scope="module")
def shards(tiny_lists, tmp_path_factory) -> dict[str, str]:
    """The tiny lists as shards: 24 training videos in 6 shards, 4 val and 4 test in 2."""
    root = tmp_path_factory.mktemp("shards")
    out = {}
    for split, size in (("train", 200_000), ("val", 100_000), ("test", 100_000)):
        report = write_shards(tiny_lists[split], root / split, shard_size=size, workers=1)
        assert report.shards == (6 if split == "train" else 2) and not report.unreadable
        out[split] = f"{root / split}/shard-{{000000..{report.shards - 1:06d}}}.tar"
    return out


def on_shards(tiny_lists, shards, **extra) -> dict:
    """The tiny config's overrides with every split on shards instead of lists."""
    return shrink(TINY, tiny_lists) | {
        "data.train_list": None, "data.val_list": None, "data.test_list": None,
        "data.train_shards": shards["train"], "data.val_shards": shards["val"],
        "data.test_shards": shards["test"], "data.shuffle_buffer": 4} | extra


def members(folder: Path) -> dict[str, dict[str, bytes]]:
    """Every sample of a shard folder: key -> {extension: bytes}."""
    out = {}
    for shard in sorted(folder.glob("shard-*.tar")):
        out.update(read_shard(str(shard)))
    return out


def test_decoding_from_bytes_is_decoding_the_file():
    backend = make_backend("pyav")
    path = REAL / "tree.avi"
    data = VideoBytes(path.read_bytes(), "shard-000000.tar:000001.avi")
    info = backend.probe(data)
    assert info == backend.probe(path)
    assert (backend.read(data, [0, 30, 67], info, short_side=32)
            == backend.read(path, [0, 30, 67], info, short_side=32)).all()
    for bad in (b"", b"this is a text file, not a video\n" * 200):
        with pytest.raises(DecodeError, match="shard-000000.tar:000001.avi: "):
            backend.probe(VideoBytes(bad, "shard-000000.tar:000001.avi"))


def test_brace_patterns_sizes_and_urls():
    assert expand_braces("s/shard-{000008..000011}.tar") == [
        f"s/shard-{i:06d}.tar" for i in range(8, 12)]
    assert expand_braces("a{1..2}-{08..10}") == ["a1-08", "a1-09", "a1-10", "a2-08", "a2-09",
                                                 "a2-10"]
    urls = shard_urls("x/s-{0..1}.tar s3://b/s-{0..1}.tar\npipe:cat /d/s-0.tar", "/data")
    assert urls == ["/data/x/s-0.tar", "/data/x/s-1.tar", "s3://b/s-0.tar", "s3://b/s-1.tar",
                    "pipe:cat /d/s-0.tar"]
    assert [parse_size(s) for s in ("1GB", "500MB", "2000000", "64KiB")] == [
        10**9, 5 * 10**8, 2 * 10**6, 65536]
    with pytest.raises(ValueError, match="expected bytes"):
        parse_size("1 parsec")


def test_mar_data_shard_is_deterministic_resumable_and_reports_bad_videos(tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    good = [write_video(videos / f"v{i}.mp4", num_frames=16, size=(32, 32)) for i in range(5)]
    (videos / "notes.mp4").write_text("this is a text file, not a video\n" * 50)
    corrupt(good[0], videos / "cut.mp4", "truncated")
    bugy = REAL / "Megamind_bugy.avi"     # damaged index and timing, but it decodes
    listed = [f"v{i}.mp4 {i % 3}" for i in range(5)] + ["notes.mp4 1", "cut.mp4 2", f"{bugy} 0"]
    (tmp_path / "list.txt").write_text("\n".join(listed) + "\n")
    args = ["data", "shard", str(tmp_path / "list.txt"), "--root", str(videos),
            "--shard-size", "12KB"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main([*args, "--out", str(a), "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "6 videos in" in printed and "2 unreadable" in printed

    report = (a / "report.csv").read_text().splitlines()
    assert report[0] == "path,reason"
    assert sorted(line.split(",")[0] for line in report[1:]) == [
        str(videos / "cut.mp4"), str(videos / "notes.mp4")]
    samples = members(a)
    meta = {k: json.loads(m["json"]) for k, m in samples.items()}
    assert sorted(m["path"] for m in meta.values()) == sorted(
        [f"v{i}.mp4" for i in range(5)] + [str(bugy)])
    assert sorted(samples) == [f"{i:06d}" for i in range(6)]
    for key, m in samples.items():
        ext = Path(meta[key]["path"]).suffix[1:]
        assert sorted(m) == sorted(["cls", "json", ext]) and int(m["cls"]) == meta[key]["label"]
        source = bugy if meta[key]["path"] == str(bugy) else videos / meta[key]["path"]
        assert m[ext] == source.read_bytes() and meta[key]["frames"] > 0
    index = json.loads((a / "index.json").read_text())
    tars = sorted(p.name for p in a.glob("shard-*.tar"))
    assert [s["name"] for s in index["shards"]] == tars and len(tars) >= 3
    assert (index["samples"], index["classes"], index["unreadable"]) == (6, 3, 2)
    assert [s["bytes"] for s in index["shards"]] == [(a / n).stat().st_size for n in tars]

    assert main([*args, "--out", str(b), "--workers", "1"]) == 0          # byte-identical
    for name in [*tars, "index.json", "report.csv"]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name

    # a killed run: one shard missing, another's temporary file left behind
    before = {n: (a / n).stat() for n in tars}
    (a / tars[1]).unlink()
    (a / f".tmp-{tars[2]}-dead").write_bytes(b"half a shard")
    assert main([*args, "--out", str(a)]) == 0
    assert "already complete" in capsys.readouterr().out
    assert (a / tars[1]).read_bytes() == (b / tars[1]).read_bytes()
    for name in tars:
        if name != tars[1]:
            after = (a / name).stat()
            assert (after.st_ino, after.st_mtime_ns) == (before[name].st_ino,
                                                         before[name].st_mtime_ns), name
    assert not list(a.glob(".tmp-*"))

    assert main([*args, "--out", str(a), "--seed", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "another list, seed or shard size" in err and len(err.splitlines()) == 1


def test_training_streams_yield_k_samples_in_round_robin_batches_and_resume(tiny_lists,
                                                                           shards):
    cfg = load_config(TINY, as_args(on_shards(tiny_lists, shards)))
    data = cfg.dataset("train")
    offsets, counts = data.shards.offsets, data.shards.samples
    # 2 processes x 2 workers: 4 streams of K = 24 // (4 x 2) x 2 = 6 samples
    placed = [data.for_rank(r, 2, workers=2, batch_size=2) for r in range(2)]
    assert placed[0].per_stream == 6 and placed[0].videos_per_process == 12
    slots, read_by = {}, []
    for s in range(4):
        shards_of = placed[0].stream_shards(0, s)
        read_by += shards_of
        read = [offsets[i] + k for i in shards_of for k in range(counts[i])] * 6
        slots[s] = [sample.index for sample, _ in placed[0].slots(0, s)]
        assert sorted(slots[s]) == sorted(read[:6])    # the first K it reads, shuffled
    assert sorted(read_by) == list(range(6))           # each shard read by one stream
    assert [placed[0].stream_shards(1, s) for s in range(4)] != \
        [placed[0].stream_shards(0, s) for s in range(4)]
    assert slots[0] != [sample.index for sample, _ in placed[0].slots(1, 0)]

    # rank 1's loader: batch j is the next 2 slots of stream 2 + j mod 2
    info = DistInfo(1, 2, 1, torch.device("cpu"))
    loader = build_loader(data, 2, info, workers=2, seed=0)
    assert loader.videos_per_process == 12
    loader.set_epoch(0)
    batches = list(loader)
    assert [b["index"].tolist() for b in batches] == [
        slots[2 + j % 2][j // 2 * 2:j // 2 * 2 + 2] for j in range(6)]
    loader.set_epoch(0, start=3 * 2)                   # resumed after 3 batches
    resumed = list(loader)
    assert len(resumed) == 3
    for x, y in zip(resumed, batches[3:], strict=True):
        assert torch.equal(x["index"], y["index"]) and torch.equal(x["video"], y["video"])


def test_evaluation_sees_every_sample_once_over_two_ranks_and_two_workers(tiny_lists,
                                                                         shards):
    cfg = load_config(TINY, as_args(on_shards(tiny_lists, shards,
                                              **{"data.test_shards": shards["train"]})))
    data = cfg.dataset("test")
    seen = []
    for rank in range(2):
        views = data.for_rank(rank, 2)
        got = [i for batch in view_loader(views, 8, workers=2) for i in batch["index"].tolist()]
        assert len(got) == len(views) == sum(data.shards.samples[rank::2])
        seen += got
    assert sorted(seen) == list(range(24))


def test_shards_read_through_fsspec_urls_and_pipes(tiny_lists, shards):
    folder = Path(shards["test"]).parent
    pattern = "shard-{000000..000001}.tar"

    def items(spec: str, index: str | None = None) -> list[dict]:
        cfg = load_config(TINY, as_args(on_shards(tiny_lists, shards, **{
            "data.test_shards": spec, "data.shard_index": index})))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return list(cfg.dataset("test"))

    local = items(f"{folder}/{pattern}")
    assert [it["index"] for it in local] == [0, 1, 2, 3] and all(it["valid"] for it in local)
    for other in (items(f"file://{folder}/{pattern}"),
                  items(f"pipe:cat {folder}/{pattern}", str(folder / "index.json"))):
        assert [it["index"] for it in other] == [0, 1, 2, 3]
        for a, b in zip(local, other, strict=True):
            assert torch.equal(a["video"], b["video"])
    failed = items("pipe:false shard-{000000..000001}.tar", str(folder / "index.json"))
    assert [it["valid"] for it in failed] == [False] * 4
    assert "the shard ends before it" in failed[0]["error"]


def test_evaluation_on_shards_predicts_what_evaluation_on_the_list_does(tiny_lists, shards):
    lists = shrink(TINY, tiny_lists) | {"data.test_list": str(tiny_lists["train"]),
                                        "eval.batch_size": 1}
    sharded = on_shards(tiny_lists, shards, **{"data.test_shards": shards["train"],
                                               "eval.batch_size": 1})
    cfg_list, cfg_shards = (load_config(TINY, as_args(o)) for o in (lists, sharded))
    torch.manual_seed(0)
    model = cfg_list.model.build()
    paths = [line.split()[0] for line in tiny_lists["train"].read_text().splitlines()]
    folder = Path(shards["train"]).parent
    by_number = {int(k): json.loads(m["json"])["path"] for k, m in members(folder).items()}
    scores = {}
    for cfg, name in ((cfg_list, "list"), (cfg_shards, "shards")):
        out = predict_views(model, eval_loader(cfg, "test", CPU), cfg.test_masking())
        where = paths if name == "list" else by_number
        scores[name] = {where[i]: s for i, s in zip(out["video"].tolist(), out["scores"],
                                                    strict=True)}
    assert sorted(scores["list"]) == sorted(scores["shards"]) and len(scores["list"]) == 24
    for path, s in scores["list"].items():
        assert torch.equal(s, scores["shards"][path]), path
    # and the accuracy of the test split (4 videos)
    cfg_list, cfg_shards = (load_config(TINY, as_args(o | {"eval.batch_size": 1})) for o in (
        shrink(TINY, tiny_lists), on_shards(tiny_lists, shards)))
    a, b = (run_eval(cfg, model, "test", CPU) for cfg in (cfg_list, cfg_shards))
    assert a.summary() == b.summary() and (a.confusion == b.confusion).all()
    assert a.num_videos == 4


@pytest.mark.slow
def test_a_killed_run_on_shards_resumes_to_the_same_losses(tiny_lists, shards, tmp_path):
    """Two loader workers, batch 4: 6 steps an epoch; SIGKILLed after step 3 (an odd
    number of batches: the resumed loader's first worker takes the second stream)."""
    overrides = on_shards(tiny_lists, shards, **{
        "data.val_shards": None, "data.test_shards": None, "data.num_workers": 2,
        "train.batch_size": 4, "train.epochs": 2, "train.max_steps": 5, "train.save_every": 1})
    args = ["train", str(TINY), *as_args(overrides)]
    assert main([*args, "--out", str(tmp_path / "reference")]) == 0
    reference = real._losses(tmp_path / "reference")
    assert sorted(reference) == list(range(1, 6))
    run = tmp_path / "killed"
    real._kill_after_checkpoint([sys.executable, "-m", "mar", *args, "--out", str(run)],
                                run, step=3)
    assert main([*args, "--out", str(run), "--resume", "auto"]) == 0
    assert real._losses(run) == reference


@pytest.mark.slow
def test_two_gloo_processes_train_evaluate_and_resume_on_shards(tiny_lists, shards,
                                                                tmp_path, capsys):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "ddp"
    overrides = on_shards(tiny_lists, shards, **{"data.test_shards": None,
                                                 "train.max_steps": 2})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29531", "-m", "mar", "train", "--out", str(run), str(TINY)]
    out = subprocess.run([*cmd, *as_args(overrides)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    # 24 samples, 2 processes x 1 stream, batch 2: 6 steps an epoch
    assert "effective batch 4" in out.stdout
    out = subprocess.run([*cmd, *as_args(overrides | {"train.max_steps": 3}), "--resume",
                          "auto"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resumed from" in out.stdout
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in log if "loss" in r}) == [1, 2, 3]
    assert sum("val_top1" in r for r in log) == 2

    # the final checkpoint evaluated on the test shards and on the test list
    results = []
    for split in ({"data.test_shards": shards["test"]},
                  {"data.test_list": str(tiny_lists["test"])}):
        assert main(["eval", "--checkpoint", str(run / "checkpoint-00000003"),
                     *as_args(split), "--out", str(tmp_path / "eval")]) == 0
        results.append(json.loads((tmp_path / "eval" / "eval.json").read_text()))
    assert results[0] == results[1] and results[0]["videos"] == 4


def _tar(path: Path, samples: list[dict[str, bytes]], cut: int | None = None) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            for name, data in sorted(sample.items()):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue()[:cut])


def test_bad_members_are_skipped_named_and_counted(tiny_lists, tmp_path):
    videos = [Path(line.split()[0]).read_bytes()
              for line in tiny_lists["train"].read_text().splitlines()[:8]]

    def sample(n, video=None, label=b"1", ext="mkv"):
        s = {f"{n:06d}.{ext}": videos[n] if video is None else video,
             f"{n:06d}.json": b"{}"}
        return s | ({f"{n:06d}.cls": label} if label is not None else {})

    folder = tmp_path / "bad"
    folder.mkdir()
    _tar(folder / "shard-000000.tar", [sample(0), sample(1, b"not a video\n" * 300, ext="mp4"),
                                       sample(2)])
    _tar(folder / "shard-000001.tar", [sample(3), sample(4, label=None),
                                       sample(5, label=b"abc")])
    _tar(folder / "shard-000002.tar", [sample(6), sample(7)])
    whole = (folder / "shard-000002.tar").stat().st_size
    _tar(folder / "shard-000002.tar", [sample(6), sample(7)], cut=whole - 10240 - 5000)
    (folder / "index.json").write_text(json.dumps({"shards": [
        {"name": f"shard-00000{i}.tar", "samples": n} for i, n in enumerate((3, 3, 2))]}))
    pattern = str(folder / "shard-{000000..000002}.tar")
    named = {"shard-000000.tar:000001.mp4", "shard-000001.tar:000004.mkv",
             "shard-000001.tar:000005.mkv", "shard-000002.tar:000007.mkv"}

    overrides = shrink(TINY, tiny_lists) | {
        "data.train_list": None, "data.val_list": None, "data.test_list": None,
        "data.train_shards": pattern, "data.shuffle_buffer": 3}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", str(TINY), *as_args(overrides), "--out", str(tmp_path / "run"),
                     "train.epochs=1"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert named <= set(summary["skipped_files"]) and summary["skipped_videos"] >= 4
    assert set(summary["skipped_files"]) <= named
    assert any("shard-000002.tar: cannot be read to its end in 000007.mkv" in str(w.message)
               for w in caught)

    cfg = load_config(TINY, as_args(shrink(TINY, tiny_lists) | {
        "data.test_list": None, "data.test_shards": pattern}))
    with pytest.warns(UserWarning, match="cannot be read to its end in 000007.mkv"):
        items = list(cfg.dataset("test"))
    assert [it["index"] for it in items] == list(range(8))
    assert {it["index"] for it in items if not it["valid"]} == {1, 4, 5, 7}
    assert "no .cls member" in items[4]["error"] and "'abc'" in items[5]["error"]


@pytest.mark.parametrize("change, message", [
    ({"data.train_shards": "{folder}/shard-{{000000..000006}}.tar"}, "no such shard: "),
    ({"data.train_shards": "file://{folder}/shard-{{000000..000006}}.tar"}, "no such shard"),
    ({"data.train_shards": "nosuchproto://bucket/shard-000000.tar"}, "cannot open"),
    ({"data.train_shards": "{folder}/shard-{{000000..000004}}.tar"}, "lists 6 shards"),
    ({"data.shard_index": "{folder}/missing.json"}, "missing.json: not found"),
    ({"data.train_list": "{folder}/list.csv"}, "both set"),
    ({"data.num_workers": 8}, "6 shards for 8 streams"),
], ids=["missing", "file-url", "protocol", "index", "no-index", "list-too", "streams"])
def test_bad_shards_stop_before_the_run_directory_is_written(tiny_lists, shards, tmp_path,
                                                             capsys, change, message):
    folder = str(Path(shards["train"]).parent)
    change = {k: v.format(folder=folder) if isinstance(v, str) else v
              for k, v in change.items()}
    overrides = on_shards(tiny_lists, shards) | change
    out = tmp_path / "run"
    assert main(["train", str(TINY), *as_args(overrides), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()
