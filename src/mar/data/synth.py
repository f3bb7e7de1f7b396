"""A synthetic, Something-Something-like action benchmark that needs time to solve.

Each video shows one or two objects (square, disc, triangle, bar; random colours and
sizes) over a textured background with static distractor shapes and a slight camera
jitter. The class is what happens over time: which way the object moves, which way it
turns, whether it approaches or recedes, appears or disappears, whether two objects meet
or pass each other. No single frame tells the class. Everything is drawn with NumPy
from a seed and written as real H.264 files with lists in the ``path label`` format.

That is the ``"shapes"`` kind. ``SynthConfig(kind="natural")`` writes the second benchmark
instead, camera and object motion over real photographs (:mod:`mar.data.natural`), with
the same files, cache and manifest.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..atomic import TMP, recover, write_text
from . import natural
from .lists import VideoRecord, write_class_names, write_list
from .video_writer import write_video

CLASSES = (
    "moving left", "moving right", "moving up", "moving down",
    "turning clockwise", "turning anticlockwise",
    "approaching", "receding",
    "appearing", "disappearing",
    "two objects meeting", "two objects passing each other",
)
SHAPES = ("square", "disc", "triangle", "bar")


KINDS = {"shapes": CLASSES, "natural": natural.CLASSES}  # kind -> its class names
DEFAULT_SIZE = {"shapes": 64, "natural": 112}  # natural: patch 16 gives a 7x7 grid


@dataclass(frozen=True)
class SynthConfig:
    """Settings of a synthetic set. ``kind``: ``"shapes"`` (this module's drawn shapes
    over noisy backgrounds) or ``"natural"`` (camera and object motion over real
    photographs, :mod:`mar.data.natural`); ``size`` None means the kind's default."""

    num_frames: int = 16
    size: int | None = None
    fps: int = 12
    per_class_train: int = 40
    per_class_val: int = 10
    seed: int = 0
    crf: int = 18
    kind: str = "shapes"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"SynthConfig.kind: unknown {self.kind!r}, expected one of "
                             f"{', '.join(KINDS)}")
        if self.size is None:
            object.__setattr__(self, "size", DEFAULT_SIZE[self.kind])


def class_names(kind: str = "shapes") -> tuple[str, ...]:
    """The class names of a kind of synthetic set, in label order."""
    if kind not in KINDS:
        raise ValueError(f"unknown synthetic set kind {kind!r}, expected one of "
                         f"{', '.join(KINDS)}")
    return KINDS[kind]


def _shape_mask(kind: str, yy, xx, cy, cx, radius, angle) -> np.ndarray:
    """Boolean (H, W) of a shape centred at (cy, cx), rotated by ``angle`` radians."""
    c, s = math.cos(angle), math.sin(angle)
    u = (xx - cx) * c + (yy - cy) * s            # coordinates in the shape's frame
    v = -(xx - cx) * s + (yy - cy) * c
    if kind == "square":
        return (np.abs(u) <= radius) & (np.abs(v) <= radius)
    if kind == "disc":
        return u**2 + v**2 <= radius**2
    if kind == "bar":
        return (np.abs(u) <= radius) & (np.abs(v) <= radius / 3)
    # triangle pointing along +u: its orientation shows rotation
    return (u >= -radius) & (np.abs(v) <= (radius - u) / 2) & (u <= radius)


def _background(rng, size: int) -> np.ndarray:
    kind = rng.integers(3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = rng.uniform(20, 110, 3)
    if kind == 0:  # smooth gradient
        d = rng.normal(size=2)
        g = (yy * d[0] + xx * d[1]) / size
        img = base + 40 * g[..., None] * rng.uniform(0.3, 1, 3)
    elif kind == 1:  # stripes
        f = rng.uniform(0.1, 0.5)
        a = rng.uniform(0, math.pi)
        g = np.sin(f * (xx * math.cos(a) + yy * math.sin(a)))
        img = base + 25 * g[..., None]
    else:  # blotchy noise
        small = rng.uniform(-1, 1, (size // 8 + 1, size // 8 + 1, 3))
        img = base + 35 * np.kron(small, np.ones((8, 8, 1)))[:size, :size]
    return img + rng.normal(0, 6, (size, size, 3))


def _colour(rng) -> np.ndarray:
    c = rng.uniform(0, 1, 3)
    c[rng.integers(3)] = 1.0
    return 140 + 115 * c


def render(label: int, cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """One clip of class ``label``: uint8 (T, H, W, 3)."""
    t_n, size = cfg.num_frames, cfg.size
    pad = 6
    yy, xx = np.mgrid[-pad:size + pad, -pad:size + pad].astype(np.float32)
    canvas = _background(rng, size + 2 * pad)
    for _ in range(rng.integers(1, 4)):  # static distractors
        m = _shape_mask(rng.choice(SHAPES), yy, xx, *rng.uniform(0, size + 2 * pad, 2),
                        rng.uniform(2, 5), rng.uniform(0, math.pi))
        canvas[m] = 0.6 * canvas[m] + 0.4 * _colour(rng) * 0.7
    kind = rng.choice(SHAPES)
    colour = _colour(rng)
    r = rng.uniform(0.09, 0.14) * size
    ts = np.linspace(0, 1, t_n)
    centre = np.array([size / 2, size / 2]) + pad + rng.uniform(-0.12, 0.12, 2) * size
    span = rng.uniform(0.35, 0.5) * size
    angle0 = rng.uniform(0, 2 * math.pi)
    objects = []  # per frame: list of (cy, cx, radius, angle, alpha, kind, colour)
    name = CLASSES[label]
    # two objects on (nearly) one row, from opposite sides: meeting ones stop when they
    # touch, passing ones cross and go on; the rows differ at random in both classes
    offset, lane = 0.38 * size, rng.uniform(-0.6, 0.6, 2) * r
    meet = name.endswith("meeting")

    def along(t, side):
        stop = min(t / 0.75, 1.0) * (offset - 0.8 * r)  # meeting: touch, then rest
        x = -offset + (stop if meet else t * 2 * offset)
        return centre + np.array([lane[side], x if side == 0 else -x])

    pair_centres = (lambda t: along(t, 0), lambda t: along(t, 1))
    pair_looks = ((kind, colour), (rng.choice(SHAPES), _colour(rng)))
    for t in ts:
        cy, cx, rad, ang, alpha = *centre, r, angle0, 1.0
        if name.startswith("moving"):
            d = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}[name[7:]]
            cy, cx = centre + (t - 0.5) * span * np.array(d)
        elif name.startswith("turning"):
            sign = 1 if name == "turning clockwise" else -1
            ang = angle0 + sign * t * 1.2 * math.pi
            if kind == "disc":
                kind = "triangle"  # a disc shows no turn
        elif name in ("approaching", "receding"):
            grow = t if name == "approaching" else 1 - t
            rad = r * (0.5 + 1.3 * grow)
        elif name in ("appearing", "disappearing"):
            alpha = t if name == "appearing" else 1 - t
        frame_objects = [(cy, cx, rad, ang, alpha, kind, colour)]
        if name.startswith("two objects"):
            frame_objects = [(*pair_centres[k](t), r * 0.8, angle0, 1.0, *pair_looks[k])
                             for k in range(2)]
        objects.append(frame_objects)
    frames = []
    jitter = np.cumsum(rng.integers(-1, 2, (t_n, 2)), axis=0).clip(-pad + 1, pad - 1)
    for t, frame_objects in enumerate(objects):
        img = canvas.copy()
        for cy, cx, rad, ang, alpha, k, col in frame_objects:
            m = _shape_mask(k, yy, xx, cy, cx, rad, ang)
            img[m] = (1 - alpha) * img[m] + alpha * col
        dy, dx = jitter[t]
        crop = img[pad + dy:pad + dy + size, pad + dx:pad + dx + size]
        frames.append(crop)
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


# {"settings": every SynthConfig field (+ "images", the photographs' hash, for natural) or
# null, "complete": bool}
MANIFEST = "synth.json"
LEGACY_MARKER = "done"  # what older versions wrote: repr(SynthConfig(...))
SPLITS = ("train", "val")
OWN_FILES = ("train.csv", "val.csv", "classes.txt", LEGACY_MARKER)
VIDEO_GLOB = "[0-9][0-9]_[0-9][0-9][0-9][0-9].mp4"


def synthesize(out: str | Path, cfg: SynthConfig = SynthConfig(), progress=None) -> dict:
    """Write ``train/``, ``val/`` videos, ``train.csv``, ``val.csv`` and ``classes.txt``.

    Video i of split s is drawn from a generator seeded by (seed, split, class, i), so any
    subset can be regenerated identically. ``synth.json`` records the settings of the set
    and whether it is complete:

    - same settings, complete: nothing is written (a cache);
    - same settings, incomplete (an interrupted build): the missing videos are written;
    - other or unknown settings: the set's own files are deleted, every video is new;
    - a non-empty folder without ``synth.json`` (nor an older ``done`` marker) is not a
      synthetic set: it is refused, nothing in it is touched.

    Every file is written atomically, so a video that exists is whole. ``cfg.kind``
    chooses the benchmark (:data:`KINDS`); a set of another kind is other settings.
    """
    out = Path(out)
    settings = _settings(cfg)
    found = _read_manifest(out)
    same = found is not None and found["settings"] == settings
    if same and found["complete"] and all(v[-1].is_file() for v in _videos(out, cfg)):
        return {"cached": True, "path": str(out)}
    out.mkdir(parents=True, exist_ok=True)
    if not same:
        _write_manifest(out, None)  # a crash while clearing leaves "settings unknown"
        _clear(out)
        _write_manifest(out, settings)
    _build(out, cfg, progress)
    _write_manifest(out, settings, complete=True)
    return {"cached": False, "path": str(out)}


def _settings(cfg: SynthConfig) -> dict:
    """What the manifest records: every setting, and for natural sets the hash of the
    photographs (a package release that changes one makes other videos)."""
    settings = asdict(cfg)
    if cfg.kind == "natural":
        settings["images"] = natural.pool_digest()
    return settings


def _read_manifest(out: Path) -> dict | None:
    """What ``out`` holds: ``{"settings", "complete"}`` of a synthetic set (settings None
    when unknown), or None for a missing or empty folder. Anything else is refused."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise ValueError(f"{out}: not a folder, cannot write the synthetic set there")
    manifest, legacy = out / MANIFEST, out / LEGACY_MARKER
    if manifest.is_file():
        try:
            found = json.loads(manifest.read_text())
            settings = found["settings"]
            if isinstance(settings, dict):  # written before kinds existed: shapes
                settings = {**settings, "kind": settings.get("kind", "shapes")}
            return {"settings": settings, "complete": found["complete"] is True}
        except (ValueError, TypeError, KeyError):  # damaged: ours, settings unknown
            return {"settings": None, "complete": False}
    if legacy.is_file() and legacy.read_bytes().startswith(b"SynthConfig("):
        return {"settings": None, "complete": False}
    if any(not p.name.startswith(TMP) for p in out.iterdir()):
        raise ValueError(f"{out}: not empty and not a synthetic set (no {MANIFEST}); "
                         "give a new or empty folder")
    return None


def _write_manifest(out: Path, settings: dict | None, complete: bool = False) -> None:
    text = json.dumps({"settings": settings, "complete": complete}, indent=1)
    write_text(out / MANIFEST, text + "\n")


def _clear(out: Path) -> None:
    """Delete the files a synthetic set of other settings left: only those named as
    :func:`synthesize` names them."""
    for split in SPLITS:
        for video in (out / split).glob(VIDEO_GLOB):
            video.unlink()
    for name in OWN_FILES:
        (out / name).unlink(missing_ok=True)


def _videos(out: Path, cfg: SynthConfig):
    """(split, label, index, path) of every video of the set, in list order."""
    counts = {"train": cfg.per_class_train, "val": cfg.per_class_val}
    for split in SPLITS:
        for label in range(len(class_names(cfg.kind))):
            for i in range(counts[split]):
                yield split, label, i, out / split / f"{label:02d}_{i:04d}.mp4"


def _build(out: Path, cfg: SynthConfig, progress=None) -> None:
    """Write every missing video, then the lists and the class names."""
    records = {split: [] for split in SPLITS}
    for folder in (out, *(out / split for split in SPLITS)):
        folder.mkdir(exist_ok=True)
        recover(folder)  # temporaries of a killed build
    for split, label, i, path in _videos(out, cfg):
        if not path.is_file():
            seq = np.random.SeedSequence([cfg.seed, SPLITS.index(split), label, i])
            write_video(path, _render(label, cfg, np.random.default_rng(seq)), cfg.fps,
                        cfg.crf)
        records[split].append(VideoRecord(str(path.relative_to(out)), label))
        if progress:
            progress()
    for split in SPLITS:
        write_list(records[split], out / f"{split}.csv")
    write_class_names(list(class_names(cfg.kind)), out / "classes.txt")


def _render(label: int, cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    if cfg.kind == "natural":
        return natural.render(label, cfg.num_frames, cfg.size, rng)
    return render(label, cfg, rng)
