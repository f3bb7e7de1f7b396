"""Build ``path label`` lists and class names from each dataset's official metadata.

Videos are found by file name anywhere under the video root (one recursive scan), so
the folder layout may vary; what the official metadata lists but the disk lacks is
reported, not fatal. Expected names:

- Kinetics-400: ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` (or ``<youtube_id>.<ext>``);
  metadata ``train.csv``/``validate.csv`` with ``label,youtube_id,time_start,time_end,split``.
  Classes: the sorted label names of the training CSV.
- Something-Something v2: ``<id>.webm`` or ``<id>.mp4``; metadata ``labels.json``,
  ``train.json``, ``validation.json``. Class index from ``labels.json``.
- UCF101: ``<Class>/v_<Class>_gXX_cYY.avi``; ``classInd.txt``, ``trainlist0K.txt``,
  ``testlist0K.txt`` (splits 1-3). Labels are ``classInd`` minus 1.
- HMDB51: ``<class>/<video>.avi``; ``<class>_test_split<K>.txt`` with ``<video> 1|2|0``
  (1 train, 2 test, 0 unused). Classes: the sorted class names.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .lists import ListError, VideoRecord, write_class_names, write_list

VIDEO_EXTENSIONS = {".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".flv", ".mpg", ".mpeg"}
DATASETS = ("kinetics", "ssv2", "ucf101", "hmdb51")


@dataclass
class SplitReport:
    listed: int = 0
    found: int = 0
    missing: list[str] = field(default_factory=list)


def index_videos(root: str | Path) -> dict[str, str]:
    """Map file stem (and relative path without extension) -> path for every video under root."""
    root = Path(root)
    if not root.is_dir():
        raise ListError(f"{root}: no such video folder")
    index = {}
    for p in root.rglob("*"):
        if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file():
            index.setdefault(p.stem, str(p))
            index.setdefault(str(p.relative_to(root).with_suffix("")), str(p))
    return index


def _need(path: Path) -> Path:
    if not path.is_file():
        raise ListError(f"{path}: missing metadata file")
    return path


def _resolve(entries, index) -> tuple[list[VideoRecord], SplitReport]:
    """entries: (candidate keys, label, display name)."""
    records, report = [], SplitReport()
    for keys, label, name in entries:
        report.listed += 1
        path = next((index[k] for k in keys if k in index), None)
        if path is None:
            report.missing.append(name)
        else:
            records.append(VideoRecord(path, label))
            report.found += 1
    return records, report


def _kinetics(meta: Path, index, split):
    rows = {}
    for name in ("train", "validate", "val", "test"):
        if (meta / f"{name}.csv").is_file():
            with open(meta / f"{name}.csv", newline="") as f:
                rows[name] = list(csv.DictReader(f))
    if "train" not in rows:
        raise ListError(f"{meta}: missing metadata file train.csv")
    for name, table in rows.items():
        if table and not {"label", "youtube_id", "time_start", "time_end"} <= set(table[0]):
            raise ListError(f"{meta / (name + '.csv')}: expected columns "
                            "label,youtube_id,time_start,time_end,split")
    classes = sorted({r["label"] for r in rows["train"]})
    lookup = {c: i for i, c in enumerate(classes)}
    out = {}
    for name, table in rows.items():
        if name == "test" and "label" in table[0] and not table[0]["label"]:
            continue  # the official test CSV has no labels
        entries = []
        for r in table:
            if r["label"] not in lookup:
                continue
            vid = f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_" \
                  f"{int(float(r['time_end'])):06d}"
            entries.append(((vid, r["youtube_id"]), lookup[r["label"]], vid))
        out["val" if name == "validate" else name] = _resolve(entries, index)
    return classes, out


def _ssv2(meta: Path, index, split):
    labels = json.loads(_need(meta / "labels.json").read_text())
    classes = [name for name, _ in sorted(labels.items(), key=lambda kv: int(kv[1]))]
    out = {}
    for name, file in (("train", "train.json"), ("val", "validation.json")):
        entries = []
        for e in json.loads(_need(meta / file).read_text()):
            template = e["template"].replace("[", "").replace("]", "")
            if template not in labels:
                raise ListError(f"{meta / file}: video {e['id']}: template {template!r} "
                                "is not in labels.json")
            entries.append(((str(e["id"]),), int(labels[template]), str(e["id"])))
        out[name] = _resolve(entries, index)
    return classes, out


def _ucf101(meta: Path, index, split):
    classes = []
    for line in _need(meta / "classInd.txt").read_text().split("\n"):
        if line.strip():
            number, name = line.split()
            if int(number) != len(classes) + 1:
                raise ListError(f"{meta / 'classInd.txt'}: classes must be numbered 1, 2, ...")
            classes.append(name)
    lookup = {c: i for i, c in enumerate(classes)}
    out = {}
    for name, file in (("train", f"trainlist0{split}.txt"), ("val", f"testlist0{split}.txt")):
        entries = []
        for line in _need(meta / file).read_text().split("\n"):
            if not line.strip():
                continue
            rel = line.split()[0]
            cls = rel.split("/")[0]
            if cls not in lookup:
                raise ListError(f"{meta / file}: class {cls!r} is not in classInd.txt")
            stem = Path(rel).with_suffix("")
            entries.append(((str(stem), stem.name), lookup[cls], rel))
        out[name] = _resolve(entries, index)
    return classes, out


def _hmdb51(meta: Path, index, split):
    files = sorted(meta.glob(f"*_test_split{split}.txt"))
    if not files:
        raise ListError(f"{meta}: no HMDB51 split files *_test_split{split}.txt")
    classes = sorted(f.name[: -len(f"_test_split{split}.txt")] for f in files)
    lookup = {c: i for i, c in enumerate(classes)}
    entries = defaultdict(list)
    for f in files:
        cls = f.name[: -len(f"_test_split{split}.txt")]
        for line in f.read_text().split("\n"):
            if not line.strip():
                continue
            video, tag = line.split()
            split_name = {"1": "train", "2": "val"}.get(tag)
            if split_name:
                stem = Path(video).stem
                entries[split_name].append(((f"{cls}/{stem}", stem), lookup[cls],
                                            f"{cls}/{video}"))
    return classes, {name: _resolve(e, index) for name, e in entries.items()}


READERS = {"kinetics": _kinetics, "ssv2": _ssv2, "ucf101": _ucf101, "hmdb51": _hmdb51}


def prepare_dataset(dataset: str, annotations: str | Path, videos: str | Path,
                    out: str | Path, split: int = 1) -> dict[str, SplitReport]:
    """Write ``<split>.csv`` lists (``path label``), ``classes.txt`` and, where videos are
    missing, ``missing_<split>.txt`` into ``out``. Returns a report per split."""
    if dataset not in READERS:
        raise ListError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    if split not in (1, 2, 3):
        raise ListError(f"split must be 1, 2 or 3, got {split}")
    annotations = Path(annotations)
    if not annotations.is_dir():
        raise ListError(f"{annotations}: no such metadata folder")
    index = index_videos(videos)
    classes, splits = READERS[dataset](annotations, index, split)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_class_names(classes, out / "classes.txt")
    reports = {}
    for name, (records, report) in splits.items():
        if records:
            write_list(records, out / f"{name}.csv")
        missing = out / f"missing_{name}.txt"
        if report.missing:
            missing.write_text("\n".join(report.missing) + "\n")
        elif missing.exists():
            missing.unlink()
        reports[name] = report
    return reports
