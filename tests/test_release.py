"""What an installed mar-video is: its version, the configs it ships (by name, as package
data of the wheel), the release files, and the other ``mar`` on PyPI (Mozilla's MAR-file
tool, which installs a ``mar`` command too)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import yaml

import mar
from mar.cli import main
from mar.config import load_config
from mar.distribution import (
    CONFIG_DIR,
    DISTRIBUTION,
    describe,
    resolve_config,
    shipped_configs,
    version,
)
from mar.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def run_mar(*args: str, env: dict | None = None, cwd: Path | None = None):
    return subprocess.run([sys.executable, "-m", "mar", *args], capture_output=True,
                          text=True, env=env, cwd=cwd)


def test_the_distribution_is_mar_video_and_the_version_is_pyproject_s():
    assert PROJECT["name"] == DISTRIBUTION == "mar-video"
    assert metadata.version(DISTRIBUTION) == PROJECT["version"], \
        "the installed metadata is stale: pip install -e ."
    assert mar.__version__ == version() == PROJECT["version"]
    out = run_mar("--version")
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    assert first == f"mar {PROJECT['version']} ({DISTRIBUTION}, {Path(mar.__file__).parent})"


def test_the_distribution_provides_the_top_level_mar_module_alone():
    """Mozilla's ``mar`` (import name ``mardor``) never shadows ``import mar``; our wheel
    installs no other top-level name."""
    # (a set: an editable install in a fresh venv lists the distribution twice, from its
    # top_level.txt and from its files)
    assert set(metadata.packages_distributions()["mar"]) == {DISTRIBUTION}
    assert (Path(mar.__file__).parent / "cli" / "__init__.py").is_file()


def fake_dist(site: Path, name: str, version: str, script: str) -> None:
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[console_scripts]\nmar = {script}\n")


def test_version_warns_when_another_distribution_installs_a_mar_command(tmp_path):
    """PyPI's ``mar`` 3.2.1 (Mozilla) declares ``mar = mardor.cli:main``: installed beside
    mar-video, the last one installed owns the command; ``mar --version`` says so."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = run_mar("--version", env=env)
    assert out.returncode == 0 and "warning" not in out.stdout, out.stdout
    fake_dist(tmp_path, "mar", "3.2.1", "mardor.cli:main")
    out = run_mar("--version", env=env)
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"mar {PROJECT['version']} ({DISTRIBUTION}, ")
    assert lines[1].startswith("warning: mar 3.2.1 (mardor.cli:main) also installs a `mar` "
                               "command"), lines


def test_version_and_configs_do_not_import_torch():
    code = ("import sys\nfrom mar.cli import main\n"
            "for argv in (['--version'], ['configs'], ['configs', 'tiny_cpu']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('heavy:', sorted(m for m in ('torch', 'timm', 'av') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "heavy: []" in out.stdout, out.stdout[-500:] + out.stderr[-2000:]


def test_the_configs_live_in_the_package_and_the_root_folder_points_there():
    files = sorted(CONFIG_DIR.rglob("*.yaml"))
    assert len(files) >= 18 and CONFIG_DIR == ROOT / "src" / "mar" / "configs"
    assert (ROOT / "configs").resolve() == CONFIG_DIR
    assert sorted((ROOT / "configs").rglob("*.yaml")) != []
    shipped = shipped_configs()
    assert sorted(shipped.values()) == files, "two shipped configs share a name"


def test_mar_configs_lists_every_shipped_config_with_a_description(capsys):
    assert main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    shipped = shipped_configs()
    assert [line.split()[0] for line in lines] == list(shipped)
    for line, path in zip(lines, shipped.values(), strict=True):
        description = line.split(None, 1)[1]
        assert description == describe(path) and len(description) > 10, line
    assert "MAR ViT-B on Kinetics-400, mask ratio 50 %" in lines[list(shipped).index(
        "k400_vit_base_mar50")]
    assert main(["configs", "--path"]) == 0
    assert capsys.readouterr().out.split()[1::2] == [str(p) for p in shipped.values()]
    assert main(["configs", "tiny_cpu"]) == 0
    assert capsys.readouterr().out == shipped["tiny_cpu"].read_text()


def test_a_config_without_a_comment_is_described_by_its_content(tmp_path):
    bare = tmp_path / "bare.yaml"
    bare.write_text("model:\n  name: vit_small\nmasking:\n  name: tube\n")
    assert describe(bare) == "vit_small, tube"


def test_every_command_takes_a_shipped_config_by_name(capsys):
    by_path = load_config(ROOT / "configs" / "k400_vit_base_mar50.yaml")
    assert load_config("k400_vit_base_mar50") == by_path
    assert load_config("k400_vit_base_mar50.yaml") == by_path
    assert load_config("k400_vit_base_mar50_official") == load_config(
        CONFIG_DIR / "official" / "k400_vit_base_mar50_official.yaml")
    assert main(["flops", "k400_vit_base_mar50", "--json"]) == 0
    by_name = capsys.readouterr().out
    assert main(["flops", str(ROOT / "configs" / "k400_vit_base_mar50.yaml"), "--json"]) == 0
    assert capsys.readouterr().out == by_name
    assert main(["recipe", "k400_vit_base_mar50", "--processes", "8", "--json"]) == 0
    assert '"config"' in capsys.readouterr().out


def test_a_file_is_taken_before_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("tiny_cpu.yaml").write_text("model:\n  name: vit_small\n")
    assert resolve_config("tiny_cpu.yaml") == Path("tiny_cpu.yaml")
    assert load_config("tiny_cpu.yaml").model.name == "vit_small"
    assert load_config("tiny_cpu").model.name == "vit_nano"       # the shipped one


def test_an_unknown_name_is_one_line_with_close_matches_and_exit_code_2(capsys):
    assert main(["flops", "k400_vit_bse_mar50"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no such config file or shipped config" in err
    assert "close matches: k400_vit_base_mar50" in err
    assert main(["configs", "ssv2_vit_large"]) == 2
    assert "ssv2_vit_large_mar50" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"`mar configs` lists them"):
        resolve_config("qwertyuiop")
    with pytest.raises(ConfigError, match=r"no such config file$"):   # a path: no names
        resolve_config("some/dir/k400_vit_base_mar50.yaml")
    out = run_mar("recipe", "k400_vit_base_mar5")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_the_wheel_ships_the_configs_license_and_type_marker(tmp_path):
    """The wheel built from the source tree (a copy, so no build output lands in the
    repository) holds every shipped config at the path the package looks for it."""
    src = tmp_path / "src-tree"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                          "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
                          str(src)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    wheel, = (tmp_path / "dist").glob("*.whl")
    assert wheel.name == f"mar_video-{PROJECT['version']}-py3-none-any.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"mar/configs/{p.relative_to(CONFIG_DIR).as_posix()}"
               for p in CONFIG_DIR.rglob("*.yaml")}
    assert configs and configs <= names, sorted(configs - names)
    assert {"mar/py.typed", "mar/serve/static/index.html", "mar/cli/configs.py"} <= names
    info = f"mar_video-{PROJECT['version']}.dist-info"
    assert f"{info}/licenses/LICENSE" in names
    assert {n.split("/")[0] for n in names} == {"mar", info}
    meta = zipfile.ZipFile(wheel).read(f"{info}/METADATA").decode()
    assert "Name: mar-video\n" in meta and "License-Expression: Apache-2.0" in meta
    scripts = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert "mar = mar.cli:main" in scripts


def test_the_release_files_agree_with_pyproject():
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.split()[:5] == ["Apache", "License", "Version", "2.0,", "January"]
    assert "END OF TERMS AND CONDITIONS" in license_text and PROJECT["license"] == "Apache-2.0"
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["version"] == PROJECT["version"] and citation["license"] == "Apache-2.0"
    paper = citation["preferred-citation"]
    assert paper["title"] == "MAR: Masked Autoencoders for Efficient Action Recognition"
    assert [a["family-names"] for a in paper["authors"]][:2] == ["Qing", "Zhang"]
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{PROJECT['version']}]" in changelog
    assert (ROOT / "src" / "mar" / "py.typed").is_file()
    readme = (ROOT / "README.md").read_text()
    assert f"pip install {DISTRIBUTION}" in readme
