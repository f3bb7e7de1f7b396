"""The README's benchmark commands run, shrunk in model and data: their checks hold."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
    for tokens in ("MAR 50 %", "full tokens"):
        for views in ("1 view", "4 views"):
            for dtype in ("", ", bf16"):
                assert f"mar predict, {tokens}, {views} per call{dtype}" in result["times"]
    assert f"full-token top-1 agreement with transformers on the same views: {videos} of " \
           f"{videos}" in proc.stdout
    assert proc.stdout.count("bf16 top-1 equals fp32 on") == 5   # 4 mar arms + transformers
