"""What the installed distribution is and ships: its name and version, the configs inside
the package (``mar/configs/``), and a config given by name or by path.

The distribution is ``mar-video``; the import name and the command are ``mar``. The
distribution called ``mar`` on PyPI is another project (Mozilla's MAR-file tool, import name
``mardor``), which also installs a command named ``mar``: :func:`other_mar_commands` finds
it. Nothing here imports torch: ``mar configs`` and ``mar --version`` answer at once.
"""

from __future__ import annotations

import difflib
import re
from importlib import metadata
from pathlib import Path

from .errors import ConfigError

DISTRIBUTION = "mar-video"
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def version() -> str:
    """The installed distribution's version; from a source tree that is not installed, the
    version in its ``pyproject.toml``; else ``0+unknown``."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        pass
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    if pyproject.is_file():
        import tomllib

        project = tomllib.loads(pyproject.read_text()).get("project", {})
        if project.get("name") == DISTRIBUTION and "version" in project:
            return project["version"]
    return "0+unknown"


def other_mar_commands() -> list[str]:
    """Installed distributions other than ours that declare a ``mar`` console script, as
    ``name version (target)``; whichever was installed last owns the ``mar`` command."""
    found = []
    for ep in metadata.entry_points(group="console_scripts", name="mar"):
        dist = ep.dist
        name = dist.metadata["Name"] if dist is not None else "?"
        if name is None or _normalise(name) != _normalise(DISTRIBUTION):
            found.append(f"{name} {dist.version if dist is not None else '?'} ({ep.value})")
    return found


def version_text() -> str:
    """What ``mar --version`` prints: the version, where ``mar`` is imported from and, if
    another distribution also installs a ``mar`` command, a warning naming it."""
    package = Path(__file__).resolve().parent
    text = f"mar {version()} ({DISTRIBUTION}, {package})"
    for other in other_mar_commands():
        text += (f"\nwarning: {other} also installs a `mar` command, and the last one "
                 f"installed wins; `python -m mar` always runs {DISTRIBUTION}")
    return text


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def shipped_configs() -> dict[str, Path]:
    """Name (the file's stem) -> path of every config in the package, sorted by name."""
    paths = sorted(CONFIG_DIR.rglob("*.yaml"),
                   key=lambda p: (len(p.relative_to(CONFIG_DIR).parts), p.name))
    return {p.stem: p for p in paths}


def describe(path: Path) -> str:
    """One line about a config: its leading comment up to the first full stop, colon or
    semicolon, without parentheses; else the model and masking it sets."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = ""
    for line in lines:  # a line ending in "/" continues a path
        text += line if text.endswith("/") or not text else " " + line
    depth, kept = 0, []
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if depth == 0 and ch != ")":
            kept.append(ch)
    text = re.sub(r"\s+([,.:;])", r"\1", re.sub(r"\s+", " ", "".join(kept))).strip()
    sentence = re.split(r"(?<=[.:;])\s", text, maxsplit=1)[0].rstrip(".:; ")
    if sentence:
        return sentence
    import yaml

    tree = yaml.safe_load(path.read_text()) or {}
    model = (tree.get("model") or {}).get("name", "default model")
    masking = (tree.get("masking") or {}).get("name", "default masking")
    return f"{model}, {masking}"


def resolve_config(path_or_name: str | Path) -> Path:
    """The config file of ``path_or_name``: an existing file as given; else a name without
    a folder (``k400_vit_base_mar50``, ``.yaml`` optional) is a shipped config. A
    :class:`ConfigError` otherwise, naming the close matches."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    if path.parent != Path("."):
        raise ConfigError(f"{path}: no such config file")
    shipped = shipped_configs()
    name = path.name.removesuffix(".yaml")
    if name in shipped:
        return shipped[name]
    close = difflib.get_close_matches(name, list(shipped), n=3, cutoff=0.6)
    hint = f"close matches: {', '.join(close)}" if close else \
        f"{len(shipped)} shipped configs, `mar configs` lists them"
    raise ConfigError(f"{path_or_name}: no such config file or shipped config ({hint})")
