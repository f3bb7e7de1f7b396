"""``mar extract``: encoder features of every video of a dataset, one safetensors file each.

For each video, the test views (``clips x crops``, as evaluation takes them) go through
the encoder with the test-time masking, and the visible tokens after the encoder's final
norm are averaged: ``features`` (views, D). With ``--tokens`` the visible tokens
themselves are kept too, (views, N_visible, D), with their indices in the token grid.

Guarantees:

- A video's features depend only on the video and the settings, never on which other
  videos share the run, the batch or the number of processes: a video's views (the
  test views ``mar eval`` and ``mar predict`` make, :class:`mar.data.VideoViews`) are
  run by :func:`mar.inference.score` in calls of ``--batch-size`` of its own views,
  with the same (evaluation) mask for every view.
- Every output file is written atomically (:mod:`mar.atomic`); a file that exists is
  complete, and a rerun skips it. A run killed at any point resumes where it stopped.
  A rerun with different settings (weights, masking, views, ...) into the same folder
  is refused rather than mixing features.
- A video that cannot be read is recorded in the manifest with the reason, and the rest
  go on; the exit code is then 1, as ``mar predict``'s.
- Under ``torchrun`` each process takes every ``world``-th of the videos still to do; each
  writes its records to ``.manifest-rank<r>.json`` and rank 0 merges them into
  ``manifest.json`` (by files, not a collective, so ranks may finish far apart).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import __version__, atomic
from ..config import Config
from ..masking import MaskingStrategy, make_masking
from .score import score

FORMAT = "mar-features/1"
FEATURES = "features"        # the folder of per-video files inside --out
MANIFEST = "manifest.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Source:
    """One video to extract: ``key`` names it in the output (a path relative to the
    folder or list root it came from), ``label`` is the list's label, if any."""

    key: str
    path: str
    label: int | None = None


def list_sources(items: list[str], root: str | None = None) -> list[Source]:
    """Videos from folders (searched recursively), video files and ``path label`` lists
    (relative paths joined to ``root``), in the order given, each video once."""
    from ..data import read_list
    from ..data.prepare import VIDEO_EXTENSIONS
    from .predict import find_videos

    out: dict[str, Source] = {}
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = [Source(v.relative_to(p).as_posix(), str(v)) for v in find_videos([item])]
        elif p.is_file() and p.suffix.lower() not in VIDEO_EXTENSIONS:
            found = []
            for r in read_list(p, root):
                key = Path(r.path)
                if root is not None and key.is_relative_to(root):
                    key = key.relative_to(root)
                found.append(Source(key.as_posix(), r.path, r.label))
        elif p.is_file():
            found = [Source(p.as_posix(), str(p))]
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
        for s in found:
            out.setdefault(s.key, s)
    if not out:
        raise FileNotFoundError(f"no video files in {', '.join(items)}")
    return list(out.values())


def feature_name(key: str) -> str:
    """The output file of a video: its key made file-safe (at most 80 characters) and a
    hash of the whole key, so different videos never share a name (``a/b.mp4`` vs
    ``a_b.mp4``, or two long paths with the same ending)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._")[-80:] or "video"
    digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:10]
    return f"{safe}-{digest}.safetensors"


def resolve_masking(cfg: Config, ratio: float | None,
                    all_tokens: bool) -> tuple[MaskingStrategy, str]:
    """The test-time masking and where it came from: ``--all-tokens``, ``--mask-ratio``
    (cell running at that ratio) or the checkpoint's own."""
    from .load import eval_masking

    if all_tokens:
        return make_masking("none", 0.0), "--all-tokens"
    return eval_masking(cfg, ratio), "--mask-ratio" if ratio is not None else "checkpoint"


def settings_of(model, cfg: Config, masking: MaskingStrategy, masking_from: str,
                checkpoint: str, *, clips: int, crops: int, tokens: bool,
                store_dtype: str, amp: str, device: str,
                views_per_call: int) -> dict[str, Any]:
    """Everything the features depend on; a rerun into the same folder must match it."""
    from ..models.io import weights_file

    mask = masking(1, model.grid, train=False)
    dc = cfg.data
    return {
        "format": FORMAT,
        "checkpoint": str(weights_file(checkpoint).resolve()),
        "model": cfg.model.name,
        "embed_dim": model.encoder.embed_dim,
        "grid": list(model.grid),
        "masking": {"name": masking.name if mask.num_masked else "none",
                    "ratio": masking.ratio if mask.num_masked else 0.0,
                    "from": masking_from, "visible_tokens": mask.num_visible,
                    "tokens": mask.num_tokens},
        "clips": clips, "crops": crops,
        "data": {"sampling": dc.sampling, "num_frames": dc.num_frames, "stride": dc.stride,
                 "segment_test_style": dc.segment_test_style, "crop_size": dc.crop_size,
                 "short_side": dc.short_side, "backend": dc.backend},
        "tokens": tokens,
        "store_dtype": store_dtype,
        "amp": amp,
        "device": device,
        "views_per_call": views_per_call,
    }


def check_settings(out: Path, settings: dict) -> None:
    """Refuse to add to a folder whose features were made with other settings."""
    path = out / MANIFEST
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())["settings"]
    except (ValueError, KeyError) as e:
        raise ValueError(f"{path}: not a mar extract manifest ({e})") from None
    if old != settings:
        diff = [k for k in settings if old.get(k) != settings[k]]
        diff += [k for k in old if k not in settings]
        raise ValueError(f"{out}: holds features made with other settings ({', '.join(diff)} "
                         "differ); use another --out")


def save_features(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> Path:
    """One video's file, atomically (a killed run leaves no partial file), and the same
    bytes for the same inputs: the header's metadata in sorted order (safetensors itself
    writes it in a random order), spaces padding the header to 8 bytes as the format
    allows."""
    from safetensors.torch import save

    raw = save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    blob = len(text).to_bytes(8, "little") + text + raw[8 + size:]
    return atomic.write_file(path, lambda tmp: tmp.write_bytes(blob))


def packed_calls(items, per_call: int, run):
    """Run the views of a stream of videos in model calls of exactly ``per_call`` views,
    across video boundaries (the last call padded with copies of a view), and yield each
    item with its views' outputs, in stream order, once they are all done.

    ``items`` yields ``(item, views)`` with ``views`` (V, ...) or None (nothing to run:
    yielded as ``(item, None)``); ``run`` maps (per_call, ...) views to outputs. Every
    call has the same shape, so a video's outputs do not depend on which videos share
    its calls: each view's row goes through the same kernels whatever its neighbours."""
    waiting: list[list] = []           # [item, views to come, outputs so far], in order
    queue: list[Tensor] = []           # views not yet run, in the same order
    ready: list[Tensor] = []           # outputs not yet handed to a waiting item

    def drain():
        out = torch.cat(ready) if ready else None
        ready.clear()
        while waiting:
            entry = waiting[0]
            if entry[1]:
                if out is None:
                    break
                take = out[:entry[1]]
                entry[1] -= len(take)
                entry[2].append(take)
                out = out[len(take):] if len(out) > len(take) else None
                if entry[1]:
                    break
            waiting.pop(0)
            yield entry[0], torch.cat(entry[2]) if entry[2] else None
        if out is not None:
            ready.append(out)

    def call(pad: bool):
        flat = torch.cat(queue)
        n = len(flat) if pad else len(flat) // per_call * per_call
        for start in range(0, n, per_call):
            chunk = flat[start:start + per_call]
            real = len(chunk)
            if real < per_call:
                chunk = torch.cat([chunk, chunk[-1:].expand(per_call - real,
                                                             *chunk.shape[1:])])
            ready.append(run(chunk)[:real])
        queue[:] = [flat[n:]] if n < len(flat) else []
        yield from drain()

    for item, views in items:
        waiting.append([item, 0 if views is None else len(views), []])
        if views is None:
            yield from drain()
            continue
        queue.append(views)
        if sum(len(q) for q in queue) >= per_call:
            yield from call(pad=False)
    if queue:
        yield from call(pad=True)
    yield from drain()


def extract_share(model, cfg: Config, sources: list[Source], out: Path,
                  masking: MaskingStrategy, settings: dict, *, workers: int,
                  progress_name: str | None = None) -> list[dict]:
    """Extract ``sources`` (this process's share) into ``out/features``; a record each.
    ``progress_name``: the label of a progress bar (None: no bar).

    Views of consecutive videos share model calls of exactly ``views_per_call`` views
    (:func:`packed_calls`): a video's features never depend on the others."""
    from tqdm import tqdm

    from ..data import VideoRecord
    from ..runtime.device import model_device

    if not sources:
        return []
    clips, crops = settings["clips"], settings["crops"]
    views = cfg.views_dataset([VideoRecord(s.path, s.label or 0) for s in sources], clips,
                              crops)
    loader = torch.utils.data.DataLoader(views, batch_size=None, num_workers=workers,
                                         pin_memory=model_device(model).type == "cuda")
    dtype = DTYPES[settings["store_dtype"]]
    mask = masking(1, model.grid, train=False)
    per_call = settings["views_per_call"]

    def run(chunk: Tensor) -> Tensor:
        return score(model, chunk, masking, amp=settings["amp"], views_per_call=per_call,
                     features=True)

    stream = ((item, item["video"] if item["valid"] else None) for item in loader)
    records = []
    bar = tqdm(total=len(sources), desc=progress_name, unit="video",
               disable=progress_name is None, dynamic_ncols=True)
    for item, tokens in packed_calls(stream, per_call, run):
        source = sources[item["index"]]
        name = feature_name(source.key)
        record = {"video": source.path, "key": source.key, "label": source.label,
                  "file": f"{FEATURES}/{name}", "views": 0, "status": "ok", "error": None,
                  "reused": False}
        if tokens is None:
            record.update(file=None, status="error", error=item["error"])
        else:
            features = tokens.float().mean(1)                   # (V, D), pooled in float32
            tensors = {"features": features.to(dtype), "clip": item["clip"],
                       "crop": item["crop"]}
            if settings["tokens"]:
                tensors["tokens"] = tokens.to(dtype)
                tensors["token_ids"] = mask.ids_keep[0].clone()
            metadata = {"format": FORMAT, "video": source.path, "key": source.key,
                        "label": "" if source.label is None else str(source.label),
                        "settings": json.dumps(settings, sort_keys=True)}
            save_features(out / FEATURES / name, tensors, metadata)
            record["views"] = features.shape[0]
        records.append(record)
        bar.update()
    bar.close()
    return records


def existing_record(source: Source, path: Path, settings: dict) -> dict:
    """The record of a video an earlier run extracted, read from its file's header (an
    error if the file was made with other settings or cannot be read)."""
    from safetensors import safe_open

    record = {"video": source.path, "key": source.key, "label": source.label,
              "file": f"{FEATURES}/{path.name}", "views": 0, "status": "ok", "error": None,
              "reused": True}
    try:
        with safe_open(str(path), "pt") as f:
            same = json.loads(f.metadata()["settings"]) == settings
            record["views"] = f.get_slice("features").get_shape()[0]
    except Exception as e:  # a file damaged or replaced after it was written
        same, record["error"] = False, f"{path}: existing output unreadable ({e})"
    if not same:
        record.update(file=None, status="error", views=0,
                      error=(record["error"] or f"{path}: made with other settings")
                      + "; delete it to extract this video again")
    return record


def write_manifest(out: Path, settings: dict, records: list[dict] | None,
                   processes: int) -> Path:
    """``manifest.json``: the settings, and per video its file, views and status
    (``records=None``: a run in progress, no videos yet)."""
    manifest = {"settings": settings, "mar_version": __version__,
                "torch_version": torch.__version__, "processes": processes,
                "complete": records is not None}
    if records is not None:
        manifest["summary"] = {"videos": len(records),
                               "ok": sum(r["status"] == "ok" for r in records),
                               "errors": sum(r["status"] == "error" for r in records),
                               "reused": sum(r["reused"] for r in records)}
        manifest["videos"] = records
    return atomic.write_text(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def rank_file(out: Path, rank: int) -> Path:
    return out / f".manifest-rank{rank}.json"


def gather_records(out: Path, rank: int, world: int, records: list[dict],
                   poll_s: float = 0.2) -> list[dict] | None:
    """Every rank's records on rank 0 (None elsewhere), through ``.manifest-rank<r>.json``
    files: no collective, so no timeout however long the other ranks take."""
    if world == 1:
        return records
    atomic.write_text(rank_file(out, rank), json.dumps(records))
    if rank != 0:
        return None
    merged: list[dict] = []
    for r in range(world):
        while not rank_file(out, r).is_file():
            time.sleep(poll_s)
        merged += json.loads(rank_file(out, r).read_text())
    for r in range(world):
        rank_file(out, r).unlink()
    return merged


def extract(model, cfg: Config, sources: list[Source], out: str | Path, settings: dict,
            masking: MaskingStrategy, info, *, workers: int = 0) -> list[dict] | None:
    """Extract ``sources`` into ``out`` on this process's share; rank 0 returns every
    video's record, in the order of ``sources`` (other ranks: None)."""
    from ..runtime.distributed import barrier

    out = Path(out)
    if info.is_main:
        check_settings(out, settings)
        (out / FEATURES).mkdir(parents=True, exist_ok=True)
        atomic.recover(out / FEATURES)              # .tmp-* of a killed run
        for stale in out.glob(".manifest-rank*.json"):
            stale.unlink()
        if not (out / MANIFEST).is_file():
            write_manifest(out, settings, None, info.world_size)
    barrier(info)
    if not info.is_main:
        check_settings(out, settings)
    todo = [s for s in sources if not (out / FEATURES / feature_name(s.key)).is_file()]
    barrier(info)                                   # everyone listed before anyone writes
    if info.is_main:
        print(f"{len(sources)} videos: {len(sources) - len(todo)} already extracted, "
              f"{len(todo)} to do on {info.world_size} process"
              f"{'es' if info.world_size > 1 else ''}", file=sys.stderr)
    records = extract_share(model, cfg, todo[info.rank::info.world_size], out, masking,
                            settings, workers=workers,
                            progress_name=(None if not info.is_main else "videos"
                                           if info.world_size == 1 else
                                           f"videos (rank 0 of {info.world_size})"))
    merged = gather_records(out, info.rank, info.world_size, records)
    if merged is None:
        return None
    by_key = {r["key"]: r for r in merged}
    final = [by_key.get(s.key)
             or existing_record(s, out / FEATURES / feature_name(s.key), settings)
             for s in sources]
    write_manifest(out, settings, final, info.world_size)
    return final
