"""Annotation lists: the VideoMAE-style ``path label`` files users already have.

One video per line, ``<path> <label>`` separated by a space or a comma, no header
(``train.csv``/``val.csv`` of VideoMAE despite the name; ``kinetics400_train_list.txt``
of MAR). Relative paths are joined to a data root. Class names: one per line, line i
naming class i.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_text

UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


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
    for number, line in enumerate(_read_text(path, "list").splitlines(), 1):
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
    write_text(path, "\n".join(lines) + "\n")


def read_class_names(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise ListError(f"{path}: no such class-name file")
    text = _read_text(path, "class-name file")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ListError(f"{path}: no class names")
    return names


def write_class_names(names: list[str], path: str | Path) -> None:
    write_text(path, "\n".join(names) + "\n")


def _read_text(path: Path, kind: str) -> str:
    """The text of a UTF-8 file (a byte-order mark allowed); a binary or otherwise
    encoded file is a :class:`ListError` naming the file (and the line)."""
    with open(path, "rb") as f:
        head = f.read(4096)  # a video given by mistake is not read whole
        if head.startswith(UTF16_BOMS):
            raise ListError(f"{path}: UTF-16 text, expected a UTF-8 {kind}; save it as UTF-8")
        if b"\0" in head:
            raise ListError(f"{path}: a binary file, not a text {kind}")
        data = head + f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ListError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}), "
                        f"expected a UTF-8 {kind}") from None
