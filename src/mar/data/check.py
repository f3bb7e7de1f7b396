"""``mar data check``: open every video of a list, count the frames that really decode."""

from __future__ import annotations

import csv
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..atomic import write_file
from .decode import DecodeError, make_backend
from .lists import VideoRecord, write_list


@dataclass(frozen=True)
class CheckResult:
    path: str
    label: int
    status: str  # ok | unreadable | suspicious
    frames: int  # decodable frames
    header_frames: int
    note: str = ""


def check_video(record: VideoRecord, min_frames: int = 1, timeout: float = 60.0,
                backend: str = "pyav") -> CheckResult:
    """Decode every frame of one video (PyAV by default: it reports partial decodes)."""
    dec = make_backend(backend, timeout)
    try:
        info = dec.probe(record.path)
        frames = count_decodable(dec, record.path) if backend == "pyav" else info.num_frames
    except DecodeError as e:
        return CheckResult(record.path, record.label, "unreadable", 0, 0,
                           str(e).removeprefix(f"{record.path}: "))
    notes = []
    if frames < min_frames:
        notes.append(f"only {frames} decodable frames (< {min_frames})")
    if info.header_frames and frames < info.header_frames:
        notes.append(f"header claims {info.header_frames} frames, {frames} decode")
    if frames < info.num_frames:
        notes.append(f"{info.num_frames - frames} indexed frames do not decode")
    status = "ok" if not notes else ("unreadable" if frames == 0 else "suspicious")
    return CheckResult(record.path, record.label, status, frames, info.header_frames,
                       "; ".join(notes))


def count_decodable(backend, path) -> int:
    """Frames that decode, stopping at the first error (a damaged middle ends the count)."""
    import time

    deadline = time.monotonic() + backend.timeout
    n = 0
    with backend._open(path) as container:
        try:
            for _ in container.decode(container.streams.video[0]):
                n += 1
                if time.monotonic() > deadline:
                    raise DecodeError(f"{path}: decoding took over {backend.timeout:g}s")
        except DecodeError:
            raise
        except Exception:
            pass
    return n


def check_list(records: list[VideoRecord], workers: int = 2, min_frames: int = 1,
               timeout: float = 60.0, progress=None) -> list[CheckResult]:
    """Check every record in parallel processes; results in list order."""
    args = [(r, min_frames, timeout) for r in records]
    if workers <= 1:
        results = []
        for a in args:
            results.append(check_video(*a))
            if progress:
                progress()
        return results
    with ProcessPoolExecutor(workers) as pool:
        futures = [pool.submit(check_video, *a) for a in args]
        results = []
        for f in futures:
            results.append(f.result())
            if progress:
                progress()
    return results


def write_report(results: list, path: str | Path, row: type = CheckResult) -> None:
    """``results`` (dataclass rows of type ``row``) as a CSV file with a header, written
    atomically."""
    names = [field.name for field in fields(row)]

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=names)
            writer.writeheader()
            for r in results:
                writer.writerow(asdict(r))

    write_file(path, write)


def write_clean_list(results: list[CheckResult], path: str | Path,
                     keep_suspicious: bool = True) -> int:
    """The list without unreadable videos (and without suspicious ones if asked)."""
    keep = {"ok", "suspicious"} if keep_suspicious else {"ok"}
    records = [VideoRecord(r.path, r.label) for r in results if r.status in keep]
    write_list(records, path)
    return len(records)
