import json
import subprocess
import sys
from pathlib import Path

import pytest

from mar.cli import main
from mar.config import ConfigError, load_config, save_config


def test_defaults_file_and_overrides_layer(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  name: vit_nano\n  num_classes: 10\nmasking:\n  ratio: 0.75\n")
    cfg = load_config(path, ["model.head=linear", "masking.cell=[1,2]", "masking.ratio=0.5"])
    assert cfg.model.name == "vit_nano" and cfg.model.num_classes == 10
    assert cfg.model.head == "linear" and cfg.model.img_size == 224
    assert cfg.masking.cell == (1, 2) and cfg.masking.ratio == 0.5
    strategy = cfg.test_masking()
    assert strategy.cell == (1, 2) and strategy.temporal == "shuffled"
    # the saved config reloads to the same thing
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg
    head = cfg.model.build().head.head
    assert (head.in_features, head.out_features) == (64, 10)


@pytest.mark.parametrize("text,override,match", [
    ("model:\n  head_widht: 3\n", [], r"model.head_widht: unknown key"),
    ("model:\n  num_classes: ten\n", [], r"model.num_classes: Input should be a valid integer"),
    ("", ["masking.ratio=1.5"], r"masking.ratio: Input should be less than 1"),
    ("", ["trainer.lr=1"], r"trainer: unknown key"),
    ("model: [1, 2\n", [], "not valid YAML"),
    ("", ["model.head=conv"], r"model.head: Input should be .bridging., .linear., .mlp. or .none."),
])
def test_bad_configs_name_the_key(tmp_path, text, override, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path, override)


def test_masking_options_must_exist_for_the_strategy():
    with pytest.raises(ConfigError, match="unknown option"):
        load_config(None, ["masking.name=tube", "masking.cell=[2,2]"])


@pytest.mark.parametrize("override,match", [
    ("model.name=vit_bsae", "model.name: unknown model 'vit_bsae'"),
    ("masking.name=cel_running", "masking.name: unknown strategy 'cel_running'"),
    ("eval_masking.name=tubes", "masking.name: unknown strategy 'tubes'"),
])
def test_names_are_checked_when_the_config_loads_before_a_run_folder_exists(
        tmp_path, capsys, override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])
    out = tmp_path / "run"
    assert main(["train", override, "--out", str(out)]) == 2
    assert match in capsys.readouterr().err
    assert not out.exists()          # so the next attempt is not refused as "not empty"


def test_cli_flops_json(capsys):
    assert main(["flops", "model.name=vit_base", "model.num_classes=174", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["visible_tokens"] == 784 and abs(out["gflops"] - 86.35) < 0.01
    # overrides may also follow the options; anything else unknown is refused
    assert main(["flops", "--json", "model.name=vit_base", "model.num_classes=174"]) == 0
    assert json.loads(capsys.readouterr().out) == out
    with pytest.raises(SystemExit) as e:
        main(["flops", "--json", "--bogus"])
    assert e.value.code == 2 and "--bogus" in capsys.readouterr().err


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert main(["flops", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no such config file" in err and "\n" not in err
    assert main(["flops", "masking.cell=[3,3]"]) == 2
    err = capsys.readouterr().err
    assert "does not tile" in err and "\n" not in err.strip()


def test_console_script_prints_the_paper_table():
    exe = subprocess.run([sys.executable, "-m", "mar", "flops", "--paper", "--json"],
                         capture_output=True, text=True, check=True)
    rows = json.loads(exe.stdout)
    assert len(rows) >= 25
    assert all(abs(r["diff_percent"]) < 0.5 for r in rows)


def test_data_section_builds_datasets_and_checks_consistency(tmp_path):
    from videos import REAL

    lst = tmp_path / "l.csv"
    lst.write_text("bigbuckbunny.mp4 1\ntree.avi 0\n")
    cfg = load_config(None, [f"data.root={REAL}", f"data.train_list={lst}",
                             f"data.test_list={lst}", "data.test_clips=2",
                             "data.sampling=segment", "model.num_frames=8",
                             "data.num_frames=8", "data.crop_size=64", "model.img_size=64"])
    train = cfg.dataset("train")
    assert train[0]["video"].shape == (3, 8, 64, 64)
    test = cfg.dataset("test")
    assert len(test) == 2 and test[0]["video"].shape == (2 * 3, 3, 8, 64, 64)
    with pytest.raises(ConfigError, match="data.val_list is not set"):
        cfg.dataset("val")
    with pytest.raises(ConfigError, match=r"data.num_frames \(16\) differs from model"):
        load_config(None, ["model.num_frames=8"])


def test_help_and_argument_errors_do_not_import_torch():
    """`mar --help` and a usage error answer without loading torch (seconds saved)."""
    code = ("import sys\nfrom mar.cli import main\n"
            "for argv in (['--help'], ['train', '--help'], ['train'], ['predict']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "heavy = sorted(m for m in ('torch', 'timm', 'torchvision', 'av') "
            "if m in sys.modules)\n"
            "print('heavy:', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "heavy: []" in out.stdout, out.stdout[-500:] + out.stderr[-2000:]


def test_docs_cli_md_is_the_parser_s_reference():
    """docs/cli.md is generated from the parser; regenerate it with
    `python -m mar.cli.reference > docs/cli.md` when a command or option changes."""
    from mar.cli.reference import markdown

    page = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    assert page == markdown(), "docs/cli.md is stale: python -m mar.cli.reference > docs/cli.md"


def test_a_reader_that_leaves_early_is_not_an_error(tmp_path, monkeypatch, capsys):
    """`mar configs | head -1`: the pipe closes under the printing command, which exits
    0 without a traceback or an error line."""
    import os
    import sys

    out = open(tmp_path / "stdout", "w")                    # noqa: SIM115 (dup2'd below)

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

        def fileno(self):
            return out.fileno()

    saved = os.dup(1)
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    try:
        assert main(["configs"]) == 0
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        out.close()
    assert capsys.readouterr().err == ""
