"""The documented commands work as written, on a clone alone.

Every fenced block of README.md and docs/*.md says what it is in its info string:

- ``bash``: commands. Each ``mar ...`` command in it (also ``python -m mar ...``,
  ``torchrun ... -m mar ...``) is parsed by the real parser (``mar.cli.build_parser``)
  without running, so a renamed option or command fails here; the repository files it
  names (``configs/...``, ``benchmarks/...``, ``tests/...``) must exist, and the options
  given to a ``benchmarks/*.py`` script must be ones it defines.
- ``console``: a transcript; its ``$ `` lines are commands, checked as above.
- ``bash run`` / ``console run``: cheap commands that this test also runs, as written, in
  a temporary copy of the repository's data (never in the repository). A ``console run``
  transcript's shown output must be what the commands print.
- ``text``, ``python``, ``yaml``, ``json``: not commands (Python blocks must compile).

Commands too long for CI go in plain ``bash``/``console`` blocks: checked, not run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"bash", "console", "text", "python", "yaml", "json"}
REPO_DIRS = ("configs", "benchmarks", "tests", "docs", "src")
FENCE = re.compile(r"^(\s*)```(.*)$")


@dataclass
class Block:
    path: Path
    line: int
    language: str
    run: bool
    body: list[str]

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, info = m.groups()
        j = i + 1
        while not re.match(r"^\s*```\s*$", lines[j]):
            j += 1
        words = info.split()
        body = [line[len(indent):] if line.startswith(indent) else line
                for line in lines[i + 1:j]]
        marker = lines[i - 1].strip() if i else ""
        found.append(Block(path, i + 1, words[0] if words else "", "run" in words[1:],
                           body if marker != "<!-- test-command -->" else []))
        if marker == "<!-- test-command -->":
            found[-1].language = "test-command"      # .ci/run reads it verbatim
        i = j + 1
    return found


ALL = [b for path in DOCS for b in blocks(path)]


def commands(block: Block) -> list[str]:
    """The block's commands, continuation lines joined."""
    lines = block.body
    if block.language == "console":
        picked, keep = [], False
        for line in lines:
            if line.startswith("$ "):
                picked.append(line[2:])
                keep = line.endswith("\\")
            elif keep:
                picked.append(line)
                keep = line.endswith("\\")
        lines = picked
    out, current = [], ""
    for line in lines:
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            out.append(current)
            current = ""
    return [c for c in out if c.strip()]


def words(command: str) -> list[str]:
    try:
        return shlex.split(command, comments=True)
    except ValueError:                 # a multi-line python -c string: not split here
        return []


def mar_invocations(tokens: list[str]) -> list[list[str]]:
    """The argument lists given to mar in one shell command line."""
    found, parts, part = [], [], []
    for t in tokens:
        if t.endswith(";") and t != ";":
            part.append(t[:-1])
        if t in ("&&", "||", "|", ";") or t.endswith(";"):
            parts.append(part)
            part = []
        else:
            part.append(t)
    parts.append(part)
    for part in parts:
        for k, t in enumerate(part):
            if t == "mar" and all("=" in p or p in ("env", "do", "then") for p in part[:k]):
                found.append(part[k + 1:])
                break
            if t == "-m" and k + 1 < len(part) and part[k + 1] in ("mar", "mar.cli"):
                found.append(part[k + 2:])
                break
    return [[a for a in args if a not in (">", "/dev/null")] for args in found]


def expand(token: str) -> list[str]:
    m = re.search(r"\{([^{}]*,[^{}]*)\}", token)
    if not m:
        return [token]
    return [x for alt in m.group(1).split(",")
            for x in expand(token[:m.start()] + alt + token[m.end():])]


def repo_paths(tokens: list[str], cwd: Path) -> list[tuple[str, Path]]:
    """Tokens that name a file or folder of the repository (relative to the block's cwd)."""
    out = []
    for token in tokens:
        token = token.split("=", 1)[1] if token.startswith("--") and "=" in token else token
        token = token.split("=@", 1)[1] if "=@" in token else token     # curl -F name=@file
        if token.startswith("-") or "=" in token or not (
                "/" in token or token.endswith((".py", ".yaml", ".yml", ".csv", ".md"))):
            continue
        for t in expand(token):
            rel = (cwd / t).resolve().relative_to(ROOT.resolve()) \
                if (cwd / t).resolve().is_relative_to(ROOT.resolve()) else None
            if rel is not None and rel.parts and rel.parts[0] in REPO_DIRS \
                    and "$" not in t and not t.startswith("/"):
                out.append((t, cwd / t))
    return out


def script_options(script: Path) -> set[str]:
    text = script.read_text()
    return set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", text)) | {"--help", "-h"}


def test_every_block_says_what_it_is():
    bad = [f"{b.where}: ```{b.language}" for b in ALL
           if b.language not in LANGUAGES | {"test-command"}]
    assert not bad, ("label each fenced block (```bash, ```console, ```text, ```python, "
                     "...; `run` after bash/console to run it in the tests):\n"
                     + "\n".join(bad))
    assert any(b.run for b in ALL)


@pytest.mark.parametrize("block", [b for b in ALL if b.language == "python"],
                         ids=lambda b: b.where)
def test_python_blocks_compile(block):
    compile("\n".join(block.body), block.where, "exec")


SHELL = [b for b in ALL if b.language in ("bash", "console")]


@pytest.mark.parametrize("block", SHELL, ids=lambda b: b.where)
def test_documented_commands_parse_and_name_existing_files(block):
    from mar.cli import build_parser

    cwd = ROOT
    for command in commands(block):
        tokens = words(command)
        if tokens[:1] == ["cd"] and len(tokens) == 2:
            cwd = (cwd / tokens[1])
            assert cwd.is_dir(), f"{block.where}: cd {tokens[1]}: no such folder"
            continue
        for text, path in repo_paths(tokens, cwd):
            hits = list(path.parent.glob(path.name)) if "*" in path.name else [path]
            assert hits and all(p.exists() for p in hits), \
                f"{block.where}: {text}: no such file in the repository\n  {command}"
        for k, t in enumerate(tokens):
            if t.endswith(".py") and (cwd / t).resolve().parent.name == "benchmarks":
                options = script_options(cwd / t)
                unknown = [a.split("=")[0] for a in tokens[k + 1:]
                           if a.startswith("--") and a.split("=")[0] not in options]
                assert not unknown, f"{block.where}: {t} has no option {unknown}\n  {command}"
        for k, t in enumerate(tokens[:-1]):
            if t == "-m" and tokens[k + 1].startswith("mar."):
                assert importlib.util.find_spec(tokens[k + 1]) is not None, \
                    f"{block.where}: python -m {tokens[k + 1]}: no such module\n  {command}"
        for args in mar_invocations(tokens):
            if not args:
                continue
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    build_parser().parse_args(args)
                    code = 0
                except SystemExit as e:
                    code = e.code
            assert code in (0, None), \
                f"{block.where}: mar {' '.join(args)}\n{err.getvalue()[-800:]}"


RUN = [b for b in ALL if b.run]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder where the repository's relative paths resolve to copies (the videos, the
    configs, the benchmarks' inputs): what the docs' commands read, never the repository."""
    work = tmp_path_factory.mktemp("docs")
    for name in ("configs", "benchmarks", "tests/data"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, work / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    for name in ("README.md", "pyproject.toml"):
        shutil.copy(ROOT / name, work / name)
    return work


@pytest.mark.parametrize("block", RUN, ids=lambda b: b.where)
def test_cheap_documented_commands_run_as_written(block, workdir, monkeypatch):
    """`bash run` blocks exit 0; `console run` transcripts print what they show."""
    monkeypatch.chdir(workdir)
    env = {**os.environ, "COLUMNS": "80", "PATH": f"{Path(sys.executable).parent}"
           f"{os.pathsep}{os.environ.get('PATH', '')}"}
    if block.language == "bash":
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(block.body)],
                              cwd=workdir, env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, f"{block.where}:\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}"
        return
    shown, expected = [], {}
    for line in block.body:
        if line.startswith("$ "):
            shown.append(line[2:])
            expected[len(shown) - 1] = []
        else:
            expected[len(shown) - 1].append(line)
    from mar.cli import main

    for k, command in enumerate(shown):
        tokens = shlex.split(command)
        out = io.StringIO()
        if tokens[0] == "mar":           # in this process: the console script is mar.cli:main
            with contextlib.redirect_stdout(out):
                code = main(tokens[1:])
            text = out.getvalue()
        else:
            proc = subprocess.run(["bash", "-c", command], cwd=workdir, env=env,
                                  capture_output=True, text=True, timeout=120)
            code, text = proc.returncode, proc.stdout
        assert code in (0, None), f"{block.where}: {command}: exit {code}\n{text[-1500:]}"
        assert trimmed(text.splitlines()) == trimmed(expected[k]), \
            f"{block.where}: `{command}` prints another output than the doc shows"


def trimmed(lines: list[str]) -> list[str]:
    lines = [line.rstrip() for line in lines]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return lines


# paths that exist only on the machine that wrote them
# (written so that this file does not match itself)
OUTSIDE = re.compile(r"\.\./shared\b|\bshared/testdat[a]\b|/wor[k]/|/home/\w|/Users/\w"
                     r"|/roo[t]/|~[/]")


def tracked_texts() -> list[Path]:
    files = [*DOCS]
    for folder, pattern in (("tests", "*.py"), ("benchmarks", "*.py"), ("src", "*.py"),
                            ("benchmarks", "*.csv"), ("configs", "*.yaml"),
                            ("src", "*.yaml")):
        files += sorted((ROOT / folder).rglob(pattern))
    return [f for f in files if "__pycache__" not in f.parts]


def test_nothing_refers_to_a_path_outside_the_repository():
    """A clone alone runs the tests, benchmarks and docs: no file names a path beside or
    above it (the shared test-data folder of the machine this was written on, its work
    folder, a home folder), and no Python file climbs out of the repository with
    ``Path(__file__).parents[N]`` or from the root to its parent."""
    bad = []
    for path in tracked_texts():
        rel = path.relative_to(ROOT)
        depth = len(rel.parts) - 1                 # folders between the root and the file
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if OUTSIDE.search(line):
                bad.append(f"{rel}:{n}: {line.strip()}")
            if path.suffix != ".py":
                continue
            for m in re.finditer(r"__file__\)(?:\.resolve\(\))?\.parents\[(\d+)\]", line):
                if int(m.group(1)) > depth:
                    bad.append(f"{rel}:{n}: parents[{m.group(1)}] leaves the repository")
            if re.search(r"\bROOT\.parent\b|\bROOT\s*/\s*\"\.\.\"", line):
                bad.append(f"{rel}:{n}: above the repository root")
    assert not bad, "\n".join(bad)
