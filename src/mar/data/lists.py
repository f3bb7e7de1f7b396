"""Annotation lists: the VideoMAE-style ``path label`` files users already have.

One video per line, ``<path> <label>`` separated by a space or a comma, no header
(``train.csv``/``val.csv`` of VideoMAE despite the name; ``kinetics400_train_list.txt``
of MAR). Relative paths are joined to a data root. Class names: one per line, line i
naming class i.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class ListError(ValueError):
    """A list file that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class VideoRecord:
    path: str
    label: int


def read_list(path: str | Path, root: str | Path | None = None) -> list[VideoRecord]:
    """Read a ``path label`` list; ``root`` is prefixed to relative paths."""
    path = Path(path)
    if not path.is_file():
        raise ListError(f"{path}: no such list file")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.rsplit("," if "," in line else None, 1)]
        if len(parts) < 2 or not parts[0]:
            raise ListError(f"{path}:{number}: expected '<path> <label>', got {line!r}")
        video, label = parts
        try:
            label = int(label)
        except ValueError:
            raise ListError(f"{path}:{number}: label {label!r} is not an integer") from None
        if label < 0:
            raise ListError(f"{path}:{number}: negative label {label}")
        if root is not None and not Path(video).is_absolute():
            video = str(Path(root) / video)
        records.append(VideoRecord(video, label))
    if not records:
        raise ListError(f"{path}: no videos listed")
    return records


def write_list(records: list[VideoRecord], path: str | Path,
               root: str | Path | None = None) -> None:
    """Write a ``path label`` list (paths relative to ``root`` where possible), atomically."""
    path = Path(path)
    lines = []
    for r in records:
        p = Path(r.path)
        if root is not None and p.is_relative_to(root):
            p = p.relative_to(root)
        lines.append(f"{p} {r.label}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def read_class_names(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise ListError(f"{path}: no such class-name file")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise ListError(f"{path}: no class names")
    return names


def write_class_names(names: list[str], path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(names) + "\n")
    tmp.replace(path)
