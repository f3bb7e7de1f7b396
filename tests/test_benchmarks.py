"""The README's benchmark commands run, shrunk in model and data: their checks hold."""

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HF = "transformers (model card: PyAV + VideoMAEImageProcessor)"
BF16_LINE = re.compile(r"^(?P<arm>.+): bf16 top-1 equals fp32 on (?P<same>\d+) of "
                       r"(?P<of>\d+) videos; largest change of a top-5 probability "
                       r"(?P<gap>[0-9.]+)$", re.MULTILINE)


def close_top5(a: dict, b: dict, rtol: float) -> bool:
    """Two top-5 {class: probability} dicts share at least 4 classes (the 5th of a random
    model may swap), and on those each probability is within ``rtol`` of the other's."""
    shared = a.keys() & b.keys()
    return len(shared) >= 4 and all(abs(a[c] - b[c]) <= rtol * b[c] for c in shared)


def test_bench_predict_agrees_with_transformers_on_the_same_views(tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_predict.py"), "--tiny", "--long", "1",
         "--seconds", "2", "--repeats", "1", "--bf16", "--batch-sizes", "1", "4",
         "--work", str(tmp_path / "work"), "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    videos = len(result["videos"])
    assert videos == 5                             # the 4 test videos and 1 long one
    assert result["agree"] == videos               # full-token top-1 = transformers' top-1
    arms = []
    for tokens in ("MAR 50 %", "full tokens"):
        for views in ("1 view", "4 views"):
            arms.append(f"mar predict, {tokens}, {views} per call")
            for dtype in ("", ", bf16"):
                assert f"{arms[-1]}{dtype}" in result["times"]
    assert f"full-token top-1 agreement with transformers on the same views: {videos} of " \
           f"{videos}" in proc.stdout

    # every arm's bf16 line, with its numbers: top-1 equal on every video, and small moves
    lines = {m["arm"]: m for m in BF16_LINE.finditer(proc.stdout)}
    assert sorted(lines) == sorted([*arms, HF]), proc.stdout
    for m in lines.values():
        assert int(m["same"]) == int(m["of"]) == videos, m.group(0)
        assert float(m["gap"]) < 0.01, m.group(0)

    # probabilities, not only the top-1 class of a random model (its 400 classes all sit
    # near 1/400, its top 5 span about 10 %): on the classes both top-5 lists name, the
    # full-token arms are within 2 % of transformers' probabilities (same weights; the two
    # decoders' resizes differ a little: 0.5 % measured), and bf16 moves no probability
    # of any arm by more than 1 % (0.3 % measured)
    top5 = result["top5"]
    for arm in arms:
        assert len(top5[arm]) == videos
        if "full tokens" in arm:
            for ours, theirs in zip(top5[arm], top5[HF], strict=True):
                assert close_top5(ours, theirs, rtol=0.02), (arm, ours, theirs)
    for arm in [*arms, HF]:
        for fp32, bf16 in zip(top5[arm], top5[arm + ", bf16"], strict=True):
            assert close_top5(fp32, bf16, rtol=0.01), (arm, fp32, bf16)


def test_bench_loader_times_our_training_input_and_the_videomae_way(tmp_path):
    import importlib.util

    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_loader.py"), "--sets", "kinetics",
         "--videos", "1", "--seconds", "1", "--clips", "1", "--batch", "1", "--workers", "0",
         "--repeats", "1", "--arms", "mar", "before", "videomae",
         "--work", str(tmp_path / "work"), "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]

    def rate(label: str) -> float | None:
        row = re.search(rf"^\| kinetics \| {re.escape(label)} \| 0 \| ([0-9.]+) \| ([0-9.]+) \|",
                        proc.stdout, re.MULTILINE)
        return None if row is None else float(row[1])

    assert rate("mar, as shipped (uint8 hand-off: the workers)") > 0, proc.stdout
    rows = {r["arm"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["mar"]["per_core"] > 0 and len(rows["mar"]["rates"]) == 1
    # the step's normalise + erase of the uint8 clips, timed apart on one core
    assert rows["finish"]["main_side"] and rows["finish"]["per_core"] > 0
    # the pipeline before the levers, rebuilt in the benchmark: the reference of "vs before"
    assert rows["before"]["per_core"] > 0
    assert re.search(r"^\| kinetics \| mar before the levers .* \| 1\.00x \|$", proc.stdout,
                     re.MULTILINE), proc.stdout
    videomae = "VideoMAE way (decord, PIL RandAugment on full frames)"
    if importlib.util.find_spec("decord") is not None:
        assert rate(videomae) > 0, proc.stdout
        assert "cores per GPU, kinetics, VideoMAE way" in proc.stdout
    else:  # not a dependency of mar: the arm says why it is missing
        assert rate(videomae) is None and "videomae" not in rows
        assert "kinetics: VideoMAE arm skipped: decord is not installed (pip install decord)" \
            in proc.stdout
    assert re.search(r"ViT-B MAR-50 \(k400_vit_base_mar50\): training forward [0-9.]+ GMACs "
                     r"per clip \(deploy 86\.[0-9]\)", proc.stdout), proc.stdout
