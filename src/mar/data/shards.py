"""Sharded datasets: videos packed into WebDataset-format tar shards, read sequentially.

``mar data shard`` (:func:`write_shards`) writes a folder of ``shard-000000.tar``, ...
Each sample is three members in name order: ``{key}.{ext}`` (the video's bytes as they
were: mp4, webm, avi, ...), ``{key}.cls`` (the label, decimal text) and ``{key}.json``
(``path``, ``label``, ``frames``, ``fps``, ``width``, ``height``). Keys are the samples'
numbers, zero-padded, unique across the folder. ``index.json`` (written last) lists the
shards with their sample and byte counts; ``report.csv`` the videos that did not probe;
``.plan.json`` what each shard holds, so that a killed run resumes where it stopped.

Shards are read from a local path, any URL fsspec opens (``file://``, ``http(s)://``,
``s3://``, ...) or a command's standard output (``pipe:CMD``); a config names them with
brace patterns (``shards/shard-{000000..000123}.tar``). The datasets reading them are in
:mod:`mar.data.sharded`. Torch-free.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import atomic
from .lists import read_list

NAME = "shard-{:06d}.tar"
INDEX, PLAN, REPORT = "index.json", ".plan.json", "report.csv"
LABEL, META = "cls", "json"
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class ShardError(ValueError):
    """Shards that cannot be used (missing, an index that does not match); one line."""


class ShardReadError(OSError):
    """A shard that ends early or cannot be read while streaming it; ``member``: the one
    it ended in, if any."""

    def __init__(self, message: str, member: str | None = None):
        super().__init__(message)
        self.member = member


def parse_size(text: str | int) -> int:
    """Bytes from ``1GB``, ``500MB``, ``64KiB`` or ``2000000`` (GB = 10^9, GiB = 2^30)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match and _UNITS.get(match.group(2).lower())
    if not unit or float(match.group(1)) * unit < 1:
        raise ShardError(f"shard size {text!r}: expected bytes such as 1GB, 500MB or 2000000")
    return int(float(match.group(1)) * unit)


# --- naming and opening shards ---------------------------------------------------------

_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_braces(pattern: str) -> list[str]:
    """``shard-{000000..000002}.tar`` -> the three names, zero padding kept (bash's rule:
    padded to the longer bound when a bound starts with 0); several ranges multiply."""
    match = _RANGE.search(pattern)
    if not match:
        return [pattern]
    a, b = match.groups()
    width = max(len(a), len(b)) if (a[0] == "0" and len(a) > 1) or \
        (b[0] == "0" and len(b) > 1) else 0
    lo, hi = int(a), int(b)
    step = 1 if hi >= lo else -1
    head, tail = pattern[:match.start()], pattern[match.end():]
    return [f"{head}{i:0{width}d}{rest}" for i in range(lo, hi + step, step)
            for rest in expand_braces(tail)]


def is_pipe(url: str) -> bool:
    return url.startswith("pipe:")


def is_remote(url: str) -> bool:
    return "://" in url and not is_pipe(url)


def shard_urls(spec: str | list[str], root: str | None = None) -> list[str]:
    """The shards a config names: brace patterns separated by whitespace (or a list of
    them; a ``pipe:`` pattern runs to the end of its line), relative local paths joined
    to ``root`` (as the paths of a list file)."""
    urls = []
    for pattern in _patterns([spec] if isinstance(spec, str) else spec):
        for url in expand_braces(pattern):
            if not (is_pipe(url) or is_remote(url)) and root and not os.path.isabs(url):
                url = os.path.join(root, url)
            urls.append(url)
    return urls


def _patterns(texts: list[str]) -> list[str]:
    patterns = []
    for line in (line for text in texts for line in text.splitlines()):
        head, pipe, command = line.partition("pipe:")
        patterns += head.split()
        if pipe:
            patterns.append(f"pipe:{command.strip()}")
    return patterns


def shard_name(url: str) -> str:
    """The file name a shard has in its index: the last path part of its URL; for
    ``pipe:CMD``, of the command's last word that names a ``.tar``."""
    if is_pipe(url):
        words = [w for w in shlex.split(url[5:]) if ".tar" in w]
        if not words:
            raise ShardError(f"{url}: names no .tar file, so its index entry is unknown")
        url = words[-1]
    return url.rstrip("/").rsplit("/", 1)[-1]


@contextmanager
def open_url(url: str) -> Iterator[io.BufferedIOBase]:
    """A binary stream of ``url``: a local file, an fsspec URL or ``pipe:CMD``'s output
    (a command that fails is a :class:`ShardReadError` once its output is read to the end)."""
    if is_pipe(url):
        with tempfile.TemporaryFile() as err:   # a file: a chatty command never blocks
            proc = subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE, stderr=err)
            ended = False
            try:
                yield proc.stdout
                ended = proc.stdout.read(1) == b""
            finally:
                proc.stdout.close()
                if not ended:
                    proc.kill()   # left before the end (an error, or enough read)
                code = proc.wait()
            if code != 0:
                err.seek(0)
                last = err.read().decode(errors="replace").strip().splitlines()[-1:]
                raise ShardReadError(f"{url}: exit code {code}" +
                                     (f": {last[0]}" if last else ""))
    elif is_remote(url):
        import fsspec

        with fsspec.open(url, "rb") as f:
            yield f
    else:
        with open(url, "rb") as f:
            yield f


def url_exists(url: str) -> bool | None:
    """Whether the shard is there (None for ``pipe:``: nothing to ask before running it)."""
    if is_pipe(url):
        return None
    if is_remote(url):
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        return fs.exists(path)
    return os.path.isfile(url)


# --- the shards of a split -------------------------------------------------------------

@dataclass(frozen=True)
class ShardSet:
    """The shards of one split, in the order the config names them, with their sample
    counts from the index; sample ``offsets[i] + k`` is shard i's k-th sample."""

    urls: tuple[str, ...]
    names: tuple[str, ...]
    samples: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.samples)

    @property
    def offsets(self) -> tuple[int, ...]:
        return tuple(int(x) for x in np.cumsum((0, *self.samples))[:-1])


def load_shard_set(spec: str | list[str], index: str | None = None, root: str | None = None,
                   what: str = "shards") -> ShardSet:
    """The shards ``spec`` names (:func:`shard_urls`), checked before anything runs: every
    local or fsspec shard exists, and the index (``index``, default ``index.json`` beside
    the first shard) lists exactly these shard names. Errors name ``what`` (the key)."""
    urls = shard_urls(spec, root)
    if not urls:
        raise ShardError(f"{what}: no shards named")
    names = [shard_name(u) for u in urls]
    for url in urls:
        try:
            found = url_exists(url)
        except Exception as e:  # an fsspec protocol not installed, no credentials, ...
            raise ShardError(f"{what}: cannot open {url} ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None
        if found is False:
            raise ShardError(f"{what}: no such shard: {url}")
    if index is None:
        first = urls[0]
        if is_pipe(first):
            raise ShardError(f"{what}: pipe: shards need data.shard_index (the index.json)")
        index = f"{first.rsplit('/', 1)[0]}/{INDEX}" if "/" in first else INDEX
    elif root and not (is_pipe(index) or is_remote(index) or os.path.isabs(index)):
        index = os.path.join(root, index)
    try:
        with open_url(index) as f:
            table = json.load(f)
        counts = {s["name"]: int(s["samples"]) for s in table["shards"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        reason = "not found" if isinstance(e, FileNotFoundError) else \
            f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        raise ShardError(f"{what}: shard index {index}: {reason}") from None
    missing = [n for n in names if n not in counts]
    if missing:
        raise ShardError(f"{what}: {missing[0]} is not in the shard index {index}")
    if len(set(names)) != len(names) or set(names) != set(counts):
        extra = sorted(set(counts) - set(names))
        raise ShardError(f"{what}: the shard index {index} lists {len(counts)} shards, "
                         f"the pattern names {len(names)}" +
                         (f" (not named: {extra[0]}, ...)" if extra else " (some twice)"))
    return ShardSet(tuple(urls), tuple(names), tuple(counts[n] for n in names))


def split_key(member: str) -> tuple[str, str]:
    """``dir/000123.mp4`` -> (``dir/000123``, ``mp4``): WebDataset's grouping (the key
    ends at the first dot of the file name)."""
    folder, _, base = member.rpartition("/")
    key, _, ext = base.partition(".")
    return (f"{folder}/{key}" if folder else key), ext


def read_shard(url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """The samples of one shard in order: (key, {extension: bytes}). A shard that cannot
    be opened or ends inside a member raises :class:`ShardReadError` after the complete
    samples before it (one that ends between members simply ends: compare the count
    with the index)."""
    key, members, last = None, {}, None
    try:
        with open_url(url) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                last = info.name
                k, ext = split_key(info.name)
                if k != key and key is not None:
                    yield key, members
                    members = {}
                key = k
                members[ext] = tar.extractfile(info).read()
                last = None
    except (OSError, tarfile.TarError, EOFError) as e:
        where = f" in {last}" if last else ""
        raise ShardReadError(f"{shard_name(url)}: cannot be read to its end{where} "
                             f"({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                             last) from None
    if key is not None:
        yield key, members


# --- writing: `mar data shard` ---------------------------------------------------------

@dataclass(frozen=True)
class ShardReport:
    """What :func:`write_shards` did."""

    out: Path
    samples: int
    shards: int
    bytes: int
    written: int          # shards written by this run (the others were complete)
    unreadable: list[tuple[str, str]]   # (path, reason)


def _probe(path: str) -> tuple[dict | None, str | None]:
    from .decode import DecodeError, make_backend

    try:
        info = make_backend("pyav", 60.0).probe(path)
    except DecodeError as e:
        return None, str(e).removeprefix(f"{path}: ")
    if info.num_frames == 0:
        return None, "no video frames"
    return {"frames": info.num_frames, "fps": info.fps, "width": info.width,
            "height": info.height}, None


def _member_bytes(sizes: list[int]) -> int:
    """Tar bytes of members of these sizes: a 512-byte header each, data padded to 512."""
    return sum(512 + -(-s // 512) * 512 for s in sizes)


def _records(members: int) -> int:
    """A tar's size: its members, two zero blocks, padded to tarfile's 10240-byte records."""
    return -(-(members + 1024) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def _tar_size(sizes: list[int]) -> int:
    return _records(_member_bytes(sizes))


def _plan(request: dict, probes: list, root: str | None) -> dict:
    """Which sample goes into which shard: in the (shuffled) list order, a new shard when
    the next sample would take this one past ``shard_size``."""
    good = [(v, p[0]) for v, p in zip(request["videos"], probes, strict=True) if p[0]]
    width = max(6, len(str(len(good) - 1)))
    shards, current, used = [], [], 0   # used: member bytes of `current`, headers included
    for number, ((path, label, size), info) in enumerate(good):
        listed = os.path.relpath(path, root) if root and Path(path).is_relative_to(root) \
            else path
        meta = json.dumps({"path": listed, "label": label, **info}, sort_keys=True)
        ext = Path(path).suffix.lstrip(".").lower() or "video"
        sample = {"key": f"{number:0{width}d}", "path": path, "ext": ext, "label": label,
                  "size": size, "meta": meta}
        more = _member_bytes(_member_sizes(sample))
        if current and used + more + 1024 > request["shard_size"]:  # + the end blocks
            shards.append(current)
            current, used = [], 0
        current.append(sample)
        used += more
    if current:
        shards.append(current)
    return {"request": request,
            "shards": [{"name": NAME.format(i), "samples": s,
                        "bytes": _tar_size([m for x in s for m in _member_sizes(x)])}
                       for i, s in enumerate(shards)],
            "unreadable": [[v[0], p[1]] for v, p in zip(request["videos"], probes,
                                                        strict=True) if not p[0]]}


def _member_sizes(sample: dict) -> list[int]:
    return [sample["size"], len(str(sample["label"])), len(sample["meta"].encode())]


def _write_shard(out: str, shard: dict) -> int:
    """Write one shard under a temporary name, rename it when complete; its bytes."""
    def add(tar, name: str, data, size: int) -> None:
        info = tarfile.TarInfo(name)   # fixed owner, mode and time: byte-identical reruns
        info.size, info.mtime, info.mode = size, 0, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, data)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f, tarfile.open(fileobj=f, mode="w",
                                                 format=tarfile.USTAR_FORMAT) as tar:
            for s in shard["samples"]:
                members = {LABEL: str(s["label"]).encode(), META: s["meta"].encode()}
                for ext in sorted([*members, s["ext"]]):
                    if ext == s["ext"]:
                        with open(s["path"], "rb") as video:
                            add(tar, f"{s['key']}.{ext}", video, s["size"])
                    else:
                        add(tar, f"{s['key']}.{ext}", io.BytesIO(members[ext]),
                            len(members[ext]))

    path = atomic.write_file(Path(out) / shard["name"], write)
    size = path.stat().st_size
    if size != shard["bytes"]:
        path.unlink()
        raise ShardError(f"{path}: {size} bytes written, {shard['bytes']} planned: a video "
                         "changed since it was probed; run again into an empty folder")
    return size


def _complete(out: Path, shard: dict) -> bool:
    path = out / shard["name"]
    return path.is_file() and path.stat().st_size == shard["bytes"]


def write_shards(list_path: str | Path, out: str | Path, *, root: str | None = None,
                 shard_size: int = 10**9, seed: int = 0, workers: int | None = None,
                 progress: Callable[[str, int, int], None] | None = None) -> ShardReport:
    """Pack the videos of a ``path label`` list into shards of about ``shard_size`` bytes
    in ``out``: the list shuffled with ``seed`` (a list sorted by class would make shards
    of one class), every video probed (unreadable ones left out, listed in
    ``report.csv``), each shard written by one of ``workers`` processes. The same list,
    seed and size give byte-identical shards. Resumable: a rerun keeps the complete
    shards of the same plan (``.plan.json``); a different list, seed or size into a
    non-empty ``out`` is refused. ``progress(phase, done, total)`` after each video
    probed and each shard written."""
    records = read_list(list_path, root)
    order = np.random.default_rng(seed).permutation(len(records))
    videos = [[records[i].path, records[i].label, _size(records[i].path)] for i in order]
    request = {"seed": seed, "shard_size": shard_size, "videos": videos}
    out = Path(out)
    workers = workers or min(4, os.cpu_count() or 1)
    plan = _existing_plan(out)
    if plan is not None and plan["request"] != json.loads(json.dumps(request)):
        raise ShardError(f"{out} holds shards of another list, seed or shard size (its "
                         f"{PLAN} differs): write into an empty folder")
    if plan is None:
        plan = _plan(request, _probe_all([v[0] for v in videos], workers, progress), root)
        if not plan["shards"]:
            raise ShardError(f"none of the {len(videos)} videos of {list_path} could be read "
                             f"(first: {plan['unreadable'][0][0]}: {plan['unreadable'][0][1]})")
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_text(out / PLAN, json.dumps(plan))
    atomic.recover(out)  # the temporary files of a killed run
    todo = [s for s in plan["shards"] if not _complete(out, s)]
    for shard, _ in zip(todo, _map(_write_shard, [[str(out)] * len(todo), todo], workers),
                        strict=True):
        if progress:
            progress("writing shards", len(shard["samples"]), plan_total(plan))
    _write_report(out / REPORT, plan["unreadable"])
    shards = [{"name": s["name"], "samples": len(s["samples"]), "bytes": s["bytes"]}
              for s in plan["shards"]]
    labels = {x["label"] for s in plan["shards"] for x in s["samples"]}
    index = {"list": str(list_path), "seed": seed, "shard_size": shard_size,
             "samples": plan_total(plan), "bytes": sum(s["bytes"] for s in shards),
             "classes": len(labels), "unreadable": len(plan["unreadable"]), "shards": shards}
    atomic.write_text(out / INDEX, json.dumps(index, indent=1) + "\n")
    return ShardReport(out, index["samples"], len(shards), index["bytes"], len(todo),
                       [tuple(u) for u in plan["unreadable"]])


def plan_total(plan: dict) -> int:
    return sum(len(s["samples"]) for s in plan["shards"])


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _existing_plan(out: Path) -> dict | None:
    """The plan of a shard folder; None for a missing or empty folder; a folder holding
    anything else is refused."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise ShardError(f"{out} is a file, not a folder")
    if (out / PLAN).is_file():
        try:
            return json.loads((out / PLAN).read_text())
        except ValueError:
            raise ShardError(f"{out / PLAN}: unreadable; write into an empty folder") from None
    if any(out.iterdir()):
        raise ShardError(f"{out} is not empty and holds no shards ({PLAN}): write into an "
                         "empty folder")
    return None


def _probe_all(paths: list[str], workers: int, progress) -> list:
    results = []
    for result in _map(_probe, [paths], workers):
        results.append(result)
        if progress:
            progress("probing videos", 1, len(paths))
    return results


def _map(function, arguments: list[list], workers: int) -> Iterator:
    """``map(function, *arguments)`` in ``workers`` processes, in order; in this process
    when one worker (or one job) is enough."""
    jobs = len(arguments[0])
    if workers <= 1 or jobs <= 1:
        yield from map(function, *arguments)
        return
    with ProcessPoolExecutor(min(workers, jobs)) as pool:
        yield from pool.map(function, *arguments, chunksize=max(1, jobs // (8 * workers)))


def _write_report(path: Path, unreadable: list) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "reason"])
            writer.writerows(unreadable)

    atomic.write_file(path, write)
