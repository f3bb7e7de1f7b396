"""benchmarks/gpu_check.py --tiny: the CPU version of the GPU check runs every part and
reports numbers, agreement and a working torchrun, in Markdown and JSON."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def sections(text: str) -> dict[str, str]:
    """The report's ``## `` sections by their number ("1" to "4"; "Machine")."""
    out = {}
    for chunk in text.split("\n## ")[1:]:
        title, _, body = chunk.partition("\n")
        out[title.split(".")[0] if title[0].isdigit() else title] = body
    return out


def table(section: str) -> list[dict[str, str]]:
    """The section's Markdown table as rows keyed by the header's cells."""
    lines = [x for x in section.splitlines() if x.startswith("|")]
    if not lines:
        return []
    cells = [[c.strip() for c in x.strip("|").split("|")] for x in lines]
    header, rows = cells[0], cells[2:]
    return [dict(zip(header, row, strict=True)) for row in rows]


def number(cell: str) -> float:
    return float(cell.removesuffix("x"))


@pytest.mark.slow
def test_tiny_gpu_check_runs_every_part(tmp_path):
    out = tmp_path / "x.md"
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--tiny", "--out",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert text.strip() in proc.stdout
    parts = sections(text)
    assert {"Machine", "1", "2", "3", "4", "5"} <= set(parts), list(parts)
    assert "torch " in parts["Machine"] and "CPU" in parts["Machine"]

    # 1. training: both settings at both batch sizes, MAR on half the tokens
    rows = table(parts["1"])
    assert len(rows) == 4, parts["1"]
    for row in rows:
        mar = row["setting"].startswith("MAR")
        assert row["visible tokens"] == ("32 / 64" if mar else "64 / 64")
        assert number(row["median ms/step"]) > 0 and number(row["clips/s"]) > 0
        assert row["peak GiB"] == "n/a"  # no CUDA memory on a CPU, none invented

    # 2. inference: ours at every precision and batch; transformers when installed
    rows = table(parts["2"])
    ours = [r for r in rows if r["model"].startswith("ours")]
    assert {(r["precision"], r["batch"]) for r in ours} == {
        (p, b) for p in ("bf16", "fp32") for b in ("1", "4")}
    assert len(ours) == 8 and all(number(r["clips/s"]) > 0 for r in ours)
    hf = [r for r in rows if r["model"].startswith("transformers")]
    assert len(hf) == 4
    if importlib.util.find_spec("transformers"):
        assert all(number(r["clips/s"]) > 0 for r in hf)
        line = next(x for x in parts["2"].splitlines() if "fp32, batch 4: top-1" in x)
        assert "agreement 4/4" in line and float(line.rsplit(" ", 1)[1]) < 1e-3
    else:
        assert all("not installed" in r["median ms"] for r in hf)

    # 3. compile: agreement within the tolerance, or an explicit failure line
    rows = table(parts["3"])
    failed = [x for x in parts["3"].splitlines() if x.startswith("- compile failed")]
    assert len(rows) + len(failed) == 2, parts["3"]
    for row in rows:
        assert row["agrees"] == "yes"
        assert number(row["max abs diff"]) <= number(row["tolerance"])
        assert number(row["first call s"]) > 0 and number(row["compiled ms"]) > 0

    # 4. torchrun: the training run and the gloo probe both succeed
    rows = {r["run"].split()[0]: r for r in table(parts["4"])}
    assert set(rows) == {"mar", "collective"}, parts["4"]
    assert all(r["exit code"] == "0" and r["result"].startswith("ok") for r in rows.values())
    assert rows["mar"]["result"].startswith("ok: 3 steps")
    assert rows["collective"]["backend"] == "gloo"

    rows = {r["command"]: r for r in table(parts["5"])}
    assert set(rows) == {"mar predict", "mar predict --amp bf16", "mar eval",
                         "mar eval checkpoint-*", "mar extract",
                         "mar train fp16, accumulation 2, mask tokens", "mar serve"}, parts["5"]
    assert all(r["exit code"] == "0" and r["result"] == "ok" for r in rows.values()), rows

    data = json.loads(out.with_suffix(".json").read_text())
    assert data["torchrun"]["train"]["ok"] and data["torchrun"]["probe"]["ok"]
    assert len(data["training"]["rows"]) == 4 and data["machine"]["mode"].startswith("--tiny")
