"""``mar extract``: encoder features of every video of a dataset, one safetensors file each.

For each video, the test views (``clips x crops``, as evaluation takes them) go through
the encoder with the test-time masking, and the visible tokens after the encoder's final
norm are averaged: ``features`` (views, D). With ``--tokens`` the visible tokens
themselves are kept too, (views, N_visible, D), with their indices in the token grid.

Guarantees:

- A video's features depend only on the video and the settings, never on which other
  videos share the run, the batch or the number of processes: a video's views are run
  in chunks of ``--batch-size`` of its own views, with the same (evaluation) mask for
  every view.
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

import argparse
import hashlib
import json
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import __version__, atomic
from .config import Config, ConfigError
from .masking import Mask, MaskingStrategy, make_masking

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
    from .data import read_list
    from .data.prepare import VIDEO_EXTENSIONS
    from .inference import find_videos

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
    from .inference import eval_masking

    if all_tokens:
        return make_masking("none", 0.0), "--all-tokens"
    return eval_masking(cfg, ratio), "--mask-ratio" if ratio is not None else "checkpoint"


def settings_of(model, cfg: Config, masking: MaskingStrategy, masking_from: str,
                checkpoint: str, *, clips: int, crops: int, tokens: bool,
                dtype: str) -> dict[str, Any]:
    """Everything the features depend on; a rerun into the same folder must match it."""
    from .models.io import weights_file

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
        "dtype": dtype,
        "amp": cfg.train.amp,
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


class ViewsPerVideo(torch.utils.data.Dataset):
    """Item i: every test view of video i, ``{"video": (V, C, T, H, W), "clip": (V,),
    "crop": (V,)}``, or ``{"error": reason}`` when a view could not be decoded."""

    def __init__(self, views):
        self.views = views                      # a test-view VideoDataset
        self.per_video = len(views.views)

    def __len__(self) -> int:
        return len(self.views.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.views.records[index].path
        try:
            # the dataset turns a decoding error into an invalid view and a warning
            # that names the file and the reason; keep the reason for the manifest
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                items = [self.views[index * self.per_video + v]
                         for v in range(self.per_video)]
        except Exception as e:  # a bad video must not stop the others
            return {"index": index, "error": f"{path}: {type(e).__name__}: {e}"}
        bad = sum(not it["valid"] for it in items)
        if bad:
            reasons = [str(w.message).removeprefix("skipping unreadable video: ")
                       for w in caught]
            reason = reasons[0] if reasons else f"{path}: could not be decoded"
            return {"index": index, "error": f"{bad} of {len(items)} views failed: {reason}"}
        return {"index": index, "video": torch.stack([it["video"] for it in items]),
                "clip": torch.tensor([it["clip"] for it in items]),
                "crop": torch.tensor([it["crop"] for it in items])}


@torch.no_grad()
def encode_views(model, views: Tensor, mask: Mask, batch_size: int, amp_dtype=None,
                 keep_tokens: bool = False) -> tuple[Tensor, Tensor | None]:
    """(V, C, T, H, W) -> pooled features (V, D) float32 and, with ``keep_tokens``, the
    visible tokens (V, N_visible, D), in chunks of ``batch_size`` views. ``mask`` is one
    clip's mask (batch 1), used for every view."""
    device = next(model.parameters()).device
    pooled, tokens = [], []
    for chunk in views.split(batch_size):
        b = chunk.shape[0]
        m = Mask(mask.ids_keep.expand(b, -1), mask.ids_mask.expand(b, -1), mask.grid)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            x = model.forward_features(chunk.to(device, non_blocking=True), m.to(device))
        pooled.append(x.float().mean(1).cpu())      # (b, D)
        if keep_tokens:
            tokens.append(x.cpu())                  # (b, N_visible, D)
    return torch.cat(pooled), torch.cat(tokens) if keep_tokens else None


def save_features(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> Path:
    """One video's file, atomically (a killed run leaves no partial file)."""
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in tensors.items()}
    return atomic.write_file(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def extract_share(model, cfg: Config, sources: list[Source], out: Path, mask: Mask,
                  settings: dict, *, batch_size: int, workers: int,
                  progress_name: str | None = None) -> list[dict]:
    """Extract ``sources`` (this process's share) into ``out/features``; a record each.
    ``progress_name``: the label of a progress bar (None: no bar)."""
    from tqdm import tqdm

    from .data import VideoRecord
    from .engine.evaluate import AMP

    if not sources:
        return []
    clips, crops = settings["clips"], settings["crops"]
    views = cfg.eval_dataset([VideoRecord(s.path, s.label or 0) for s in sources], clips,
                             crops)
    loader = torch.utils.data.DataLoader(ViewsPerVideo(views), batch_size=None,
                                         num_workers=workers)
    dtype = DTYPES[settings["dtype"]]
    records = []
    bar = tqdm(total=len(sources), desc=progress_name, unit="video",
               disable=progress_name is None, dynamic_ncols=True)
    for item in loader:
        source = sources[item["index"]]
        name = feature_name(source.key)
        record = {"video": source.path, "key": source.key, "label": source.label,
                  "file": f"{FEATURES}/{name}", "views": 0, "status": "ok", "error": None,
                  "reused": False}
        if "error" in item:
            record.update(file=None, status="error", error=item["error"])
        else:
            features, tokens = encode_views(model, item["video"], mask, batch_size,
                                            AMP[settings["amp"]], settings["tokens"])
            tensors = {"features": features.to(dtype), "clip": item["clip"],
                       "crop": item["crop"]}
            if tokens is not None:
                tensors["tokens"] = tokens.to(dtype)
                tensors["token_ids"] = mask.ids_keep[0].clone()
            metadata = {"format": FORMAT, "video": source.path, "key": source.key,
                        "label": "" if source.label is None else str(source.label),
                        "settings": json.dumps(settings)}
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
            masking: MaskingStrategy, info, *, batch_size: int | None = None,
            workers: int = 0) -> list[dict] | None:
    """Extract ``sources`` into ``out`` on this process's share; rank 0 returns every
    video's record, in the order of ``sources`` (other ranks: None). ``batch_size``:
    views per forward pass (default: :func:`mar.inference.default_views_per_call`)."""
    from .engine.distributed import barrier
    from .inference import default_views_per_call

    out = Path(out)
    batch_size = batch_size or default_views_per_call(info.device)
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
    mask = masking(1, model.grid, train=False)
    records = extract_share(model, cfg, todo[info.rank::info.world_size], out, mask, settings,
                            batch_size=batch_size, workers=workers,
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


def cmd_extract(args: argparse.Namespace) -> int:
    from .engine.distributed import init_distributed, shutdown
    from .inference import describe_masking, load_run

    overrides = [i for i in args.items if "=" in i]
    inputs = [i for i in args.items if "=" not in i]
    if not inputs:
        raise ConfigError("extract: give a folder, video files or a list file")
    for name in ("clips", "crops", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got "
                             f"{getattr(args, name)}")
    sources = list_sources(inputs, args.root)
    model, cfg = load_run(args.checkpoint, args.config, overrides)
    masking, masking_from = resolve_masking(cfg, args.mask_ratio, args.all_tokens)
    clips = args.clips or cfg.data.test_clips
    crops = args.crops or cfg.data.test_crops
    settings = settings_of(model, cfg, masking, masking_from, args.checkpoint, clips=clips,
                           crops=crops, tokens=args.tokens, dtype=args.dtype)
    info = init_distributed(cfg.train.device)
    try:
        model.to(info.device)
        if info.is_main:
            print(describe_masking(masking, model.grid), file=sys.stderr)
        workers = cfg.data.num_workers if args.workers is None else args.workers
        records = extract(model, cfg, sources, args.out, settings, masking, info,
                          batch_size=args.batch_size, workers=workers)
    finally:
        shutdown()
    if records is None:
        return 0
    errors = [r for r in records if r["status"] == "error"]
    for r in errors:
        print(f"error: {r['error']}", file=sys.stderr)
    print(f"{len(records) - len(errors)} of {len(records)} videos extracted "
          f"({clips} x {crops} views each) into {Path(args.out) / FEATURES}; manifest "
          f"{Path(args.out) / MANIFEST}", file=sys.stderr)
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    from .extract_cli import add_parser

    """``python -m mar.extract ...`` (the form ``torchrun -m`` needs): as ``mar extract``."""
    parser = argparse.ArgumentParser(prog="mar")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args, extra = parser.parse_known_args(["extract", *(sys.argv[1:] if argv is None
                                                        else argv)])
    # `key=value` overrides may also follow the options, as with `mar`
    if any("=" not in x or x.startswith("-") for x in extra):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.items += extra
    try:
        return args.func(args)
    except (ConfigError, ValueError, RuntimeError, OSError) as e:
        print(f"mar extract: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
