"""--runtime onnxruntime|openvino|auto and --int8: the same probabilities as torch (fp32),
the same visible tokens, a cache that is reused when it matches and rebuilt when it does
not, auto's measurement recorded once and its fallbacks, and one-line errors for what
cannot run."""

from __future__ import annotations

import json

import pytest
import torch
from videos import REAL

from mar.cli import main
from mar.config import ConfigError
from mar.inference import load_model, score
from mar.inference.runtime import RuntimeModel, installed, runtime_model
from mar.masking import make_masking

VIEWS = ["--set", "data.test_clips=2", "--set", "data.test_crops=1"]


@pytest.fixture
def weights(model_dir, tmp_path):
    """A private copy of the tests' model directory: each test gets its own cache."""
    import shutil

    return shutil.copytree(model_dir, tmp_path / "model",     # not others' runtime cache
                           ignore=shutil.ignore_patterns(".mar-runtime"))


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_fp32_runtimes_give_torch_s_logits(weights, runtime):
    model, cfg = load_model(weights)
    masking = cfg.test_masking()
    compiled = runtime_model(model, masking, weights, runtime)
    assert isinstance(compiled, RuntimeModel)
    if runtime == "openvino":   # not its default bfloat16 on CPUs with AVX512_BF16 or AMX
        import openvino as ov

        assert compiled.session.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    torch.manual_seed(0)
    views = torch.randn(5, 3, 8, 64, 64)                 # an odd batch: the batch is dynamic
    mask = masking(5, model.grid, train=False)
    with torch.no_grad():
        expected = model.classify(views, mask)
    assert (compiled.classify(views, mask) - expected).abs().max() < 1e-4
    assert torch.allclose(score(compiled, views, masking, views_per_call=2),
                          score(model, views, masking, views_per_call=2), atol=1e-5)


def refuses_other_masks(compiled, model, masking) -> None:
    """``compiled`` runs only ``masking``'s visible tokens: another ratio, or the same
    count of other tokens, is an error."""
    other = make_masking("cell_running", 0.75)(1, model.grid, train=False)
    with pytest.raises(ValueError, match="its own test-time mask"):
        compiled.classify(torch.zeros(1, 3, 8, 64, 64), other)
    shifted = masking(1, model.grid, train=False)
    shifted.ids_keep[0, 0] = shifted.ids_mask[0, 0]       # same count, another token
    with pytest.raises(ValueError):
        compiled.classify(torch.zeros(1, 3, 8, 64, 64), shifted)


def test_a_runtime_model_runs_only_its_own_mask(weights):
    model, cfg = load_model(weights)
    compiled = runtime_model(model, cfg.test_masking(), weights, "onnxruntime")
    refuses_other_masks(compiled, model, cfg.test_masking())


def test_predict_and_eval_on_onnxruntime_match_torch(weights, tmp_path, capsys):
    video = str(REAL / "tree.avi")
    results = {}
    for runtime in ("torch", "onnxruntime"):
        assert main(["predict", video, "--checkpoint", str(weights), "--json", "--topk", "6",
                     "--runtime", runtime, "--mask-ratio", "0.75", *VIEWS]) == 0
        results[runtime] = json.loads(capsys.readouterr().out)[0]["top"]
    for a, b in zip(results["torch"], results["onnxruntime"], strict=True):
        assert a["class"] == b["class"] and abs(a["prob"] - b["prob"]) < 1e-4
    listed = tmp_path / "test.csv"
    listed.write_text(f"{video} 0\n{REAL / 'Megamind.avi'} 1\n")
    summaries = []
    for runtime in ("torch", "onnxruntime"):
        out = tmp_path / runtime
        assert main(["eval", "--checkpoint", str(weights), "--runtime", runtime, "--out",
                     str(out), *VIEWS, "--set", f"data.test_list={listed}",
                     "--set", "data.num_workers=0"]) == 0
        summaries.append(json.loads((out / "eval.json").read_text()))
    assert summaries[0] == summaries[1]


def test_the_cache_is_reused_when_it_matches_and_rebuilt_when_not(weights, monkeypatch,
                                                                  capsys):
    import mar.inference.export as export

    exports = []
    real = export.export_onnx
    monkeypatch.setattr(export, "export_onnx",
                        lambda *a, **k: exports.append(1) or real(*a, **k))
    model, cfg = load_model(weights)
    masking = cfg.test_masking()
    first = runtime_model(model, masking, weights, "onnxruntime")
    again = runtime_model(model, masking, weights, "onnxruntime")
    assert len(exports) == 1 and again.path == first.path
    assert first.path.parent == weights / ".mar-runtime"
    # other settings, another file
    other = runtime_model(model, make_masking("cell_running", 0.75), weights, "onnxruntime")
    int8 = runtime_model(model, masking, weights, "onnxruntime", int8=True)
    assert len(exports) == 3 and len({first.path, other.path, int8.path}) == 3
    # a damaged file is never used: rebuilt, with a note
    first.path.write_bytes(b"not an onnx file")
    capsys.readouterr()
    rebuilt = runtime_model(model, masking, weights, "onnxruntime")
    assert len(exports) == 4 and "rebuilding it" in capsys.readouterr().err
    views = torch.randn(2, 3, 8, 64, 64)
    mask = masking(2, model.grid, train=False)
    with torch.no_grad():
        assert (rebuilt.classify(views, mask) - model.classify(views, mask)).abs().max() < 1e-4
    # new weights (a new modification time): a new key
    (weights / "model.safetensors").touch()
    assert runtime_model(model, masking, weights, "onnxruntime").path != first.path


def _int8_weights(path) -> int:
    """How many int8 weight matrices an OpenVINO IR holds (NNCF's compressed weights)."""
    import openvino as ov

    return sum(op.get_type_name() == "Constant" and op.get_element_type() in
               (ov.Type.i8, ov.Type.u8) and len(op.get_output_shape(0)) == 2
               for op in ov.Core().read_model(str(path)).get_ops())


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "torch"])
def test_int8_quantises_the_linear_layers(weights, runtime, monkeypatch):
    """The int8 graph holds int8 matrices (ONNX Runtime multiplies them; OpenVINO's are
    NNCF's compressed weights, one per linear layer; torch's are torchao's quantised
    tensors, on any CPU here), and its logits follow fp32's. On this
    random 64-wide model the cosine of ONNX Runtime's dynamic int8 is 0.89-0.93 (its logits
    are small, so quantisation noise is a large part of them): the bound catches a broken
    graph, not a small accuracy loss. The accuracy gates on a trained model:
    tests/test_engine_train.py."""
    import onnx

    model, cfg = load_model(weights)
    masking = cfg.test_masking()
    if runtime == "torch":   # refused on CPUs without VNNI or AMX: the next test
        monkeypatch.setattr("mar.inference.runtime.int8_dot", lambda: True)
    int8 = runtime_model(model, masking, weights, runtime, int8=True)
    if runtime == "torch":
        linears = [m for m in int8.model.modules() if isinstance(m, torch.nn.Linear)]
        assert linears and all(type(m.weight).__module__.startswith("torchao")
                               for m in linears)
        assert all(isinstance(p, torch.nn.Parameter) and type(p) is torch.nn.Parameter
                   for p in model.parameters())              # the model itself untouched
    elif runtime == "onnxruntime":
        ops = {node.op_type for node in onnx.load(str(int8.path)).graph.node}
        assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops, ops
    else:
        linears = sum(isinstance(m, torch.nn.Linear) for m in model.encoder.modules())
        assert int8.path.suffix == ".xml" and _int8_weights(int8.path) >= linears
    views = torch.randn(3, 3, 8, 64, 64, generator=torch.Generator().manual_seed(1))
    mask = masking(3, model.grid, train=False)
    with torch.no_grad():
        ref = model.classify(views, mask)
    got = int8.classify(views, mask)
    cosine = torch.nn.functional.cosine_similarity(got, ref, dim=1)
    assert got.shape == ref.shape and bool((cosine > 0.8).all()), cosine
    if runtime != "torch":                              # torch's runs any mask, as torch
        refuses_other_masks(int8, model, masking)         # the same visible tokens


def test_torch_int8_needs_vnni_and_torchao(weights, monkeypatch, capsys):
    """--runtime torch --int8: one line on a CPU without VNNI or AMX (torchao's int8 is
    40x slower than float32 there), one naming the extra without torchao."""
    import importlib
    import importlib.util

    import mar.inference.runtime as rt

    def predict() -> str:
        assert main(["predict", str(REAL / "tree.avi"), "--checkpoint", str(weights),
                     "--runtime", "torch", "--int8", *VIEWS]) == 2
        return capsys.readouterr().err.strip().splitlines()[-1]

    monkeypatch.setattr(rt, "int8_dot", lambda: False)
    assert "needs a CPU with VNNI or AMX" in predict()
    assert "torch" not in installed(int8=True)
    monkeypatch.setattr(rt, "int8_dot", lambda: True)
    assert "torch" in installed(int8=True)
    find, load = importlib.util.find_spec, importlib.import_module

    def absent(real):
        def call(name, *args):
            if name.split(".")[0] == "torchao":
                if real is load:
                    raise ImportError(name)
                return None
            return real(name, *args)
        return call

    monkeypatch.setattr(importlib.util, "find_spec", absent(find))
    monkeypatch.setattr(importlib, "import_module", absent(load))
    assert "pip install 'mar-video[torchao]'" in predict()


@pytest.mark.parametrize("args, message", [
    (["--int8", "--amp", "bf16"], "--int8 runs in float32 apart from the int8 products"),
    (["--runtime", "torch", "--int8", "--amp", "bf16"], "--int8 runs in float32"),
    (["--reduce", "tome", "--int8"], "--reduce runs on --runtime torch in float32, not --int8"),
    (["--runtime", "onnxruntime", "--amp", "bf16"], "runs float32"),
    (["--runtime", "onnxruntime", "--reduce", "tome"], "--reduce runs on --runtime torch"),
])
def test_what_a_runtime_cannot_do_is_a_one_line_error(weights, capsys, args, message):
    assert main(["predict", str(REAL / "tree.avi"), "--checkpoint", str(weights),
                 *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("mar predict: error:")


def test_a_runtime_that_is_not_installed_names_the_extra(weights, monkeypatch, capsys):
    import importlib

    real = importlib.import_module

    def without_openvino(name, *args):
        if name.split(".")[0] == "openvino":
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_openvino)
    assert main(["predict", str(REAL / "tree.avi"), "--checkpoint", str(weights),
                 "--runtime", "openvino"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'mar-video[openvino]'" in err[0]
    assert not (weights / ".mar-runtime").exists() or not any(
        (weights / ".mar-runtime").iterdir())


def test_openvino_leaves_the_main_thread_s_signal_stack_usable(weights):
    """OpenVINO's CPU plugin swaps the compiling thread's signal stack for its own and
    unmaps it when the plugin is released. Released from another thread (a garbage
    collection there), the main thread kept an unmapped signal stack, and the next signal
    it handled (a subprocess exiting, with torch's DataLoader SIGCHLD handler installed)
    killed the process with no traceback: the suite's rare segfault. The runtime keeps
    one OpenVINO Core for the process, so its plugin is never released."""
    import subprocess
    import sys

    script = f"""
import gc, signal, subprocess, sys, threading
import torch
from mar.inference import load_model
from mar.inference.runtime import runtime_model
signal.signal(signal.SIGCHLD, lambda *a: None)        # as torch's DataLoader does
model, cfg = load_model({str(weights)!r})
masking = cfg.test_masking()
held = [runtime_model(model, masking, {str(weights)!r}, "openvino")]
held[0].classify(torch.zeros(1, 3, 8, 64, 64), masking(1, model.grid, train=False))
def drop():
    held.clear()
    gc.collect()
thread = threading.Thread(target=drop)
thread.start()
thread.join()
for _ in range(3):
    subprocess.run([sys.executable, "-c", "pass"], check=True)
print("alive")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0 and "alive" in out.stdout, (out.returncode, out.stderr[-2000:])


def test_the_other_runtimes_run_on_the_cpu(weights, fake_gpu):
    model, cfg = load_model(weights, device="cuda")          # the fake GPU
    with pytest.raises(ConfigError, match="runs on the CPU"):
        runtime_model(model, cfg.test_masking(), weights, "onnxruntime")


def test_device_auto_is_the_cpu_for_the_other_runtimes_and_int8():
    from mar.inference.runtime import runtime_device

    assert runtime_device("auto", "onnxruntime") == "cpu"
    assert runtime_device("auto", "auto", int8=True) == "cpu"
    assert runtime_device("auto", "torch", int8=True) == "cpu"
    assert runtime_device("auto", "auto") == "auto" and runtime_device("auto", "torch") == "auto"
    assert runtime_device("cuda", "openvino") == "cuda"   # asked for: refused when built


def test_the_server_answers_from_the_runtime_and_says_which(weights):
    from mar.serve.predictor import ServedModel

    served = ServedModel(weights, device="auto", runtime="onnxruntime", int8=True,
                         overrides=["data.test_clips=1", "data.test_crops=1"])
    assert served.runtime == "onnxruntime int8" and isinstance(served.runner, RuntimeModel)
    views = served.decode(REAL / "tree.avi", max_frames=10_000).views
    probs = served.scores(torch.cat([views, views]))
    assert probs.shape == (2, 6) and torch.allclose(probs.sum(1), torch.ones(2), atol=1e-5)
    timeline = served.timeline(REAL / "tree.avi", window=1.0, stride=1.0)
    assert timeline.probs.shape[0] >= 1 and timeline.probs.shape[1] == 6


def _count_measurements(monkeypatch) -> list:
    import mar.inference.auto as auto

    calls, real = [], auto._measure
    monkeypatch.setattr(auto, "_measure", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_predict_by_default_runs_auto_s_choice_measured_once(weights, monkeypatch, capsys):
    """No --runtime: auto measures the installed runtimes once, says what it chose, and
    gives torch's probabilities; the second run reads its record."""
    calls = _count_measurements(monkeypatch)
    video = str(REAL / "tree.avi")
    runs = []
    for runtime in ([], [], ["--runtime", "torch"]):
        assert main(["predict", video, "--checkpoint", str(weights), "--json", "--topk", "6",
                     *runtime, *VIEWS]) == 0
        out = capsys.readouterr()
        runs.append((json.loads(out.out)[0]["top"], out.err))
    assert len(calls) == 1
    first, second = runs[0][1], runs[1][1]
    assert "runtime auto: measuring torch, onnxruntime, openvino at 4 views" in first
    line = next(x for x in second.splitlines() if x.startswith("runtime auto: "))
    assert "measuring" not in second and "cached in" in line
    assert line.split()[2] in ("torch", "onnxruntime", "openvino")
    record = json.loads(next((weights / ".mar-runtime").glob("auto-*.json")).read_text())
    assert set(record["seconds"]) == {"torch", "onnxruntime", "openvino"}
    assert record["runtime"] == min(record["seconds"], key=record["seconds"].get)
    for a, b in zip(runs[0][0], runs[2][0], strict=True):   # auto's choice = torch
        assert a["class"] == b["class"] and abs(a["prob"] - b["prob"]) < 1e-4


def test_auto_measures_again_after_a_corrupt_or_foreign_record(weights, monkeypatch, capsys):
    import importlib.metadata

    from mar.inference.runtime import choose_runtime

    calls = _count_measurements(monkeypatch)
    model, cfg = load_model(weights)
    masking = cfg.test_masking()
    first = choose_runtime(model, masking, weights, views_per_call=2)
    assert set(first.seconds) == {"torch", "onnxruntime", "openvino"} and len(calls) == 1
    assert choose_runtime(model, masking, weights, views_per_call=2).runtime \
        == first.runtime and len(calls) == 1                    # reused
    capsys.readouterr()
    first.record.write_text("{not json")
    choose_runtime(model, masking, weights, views_per_call=2)
    assert len(calls) == 2 and "cannot be read" in capsys.readouterr().err
    record = json.loads(first.record.read_text())
    record["versions"]["torch"] = "1.0"
    first.record.write_text(json.dumps(record))
    again = choose_runtime(model, masking, weights, views_per_call=2)
    err = capsys.readouterr().err
    now = importlib.metadata.version("torch")
    assert len(calls) == 3 and f"versions.torch 1.0 -> {now}" in err, err
    assert json.loads(again.record.read_text())["versions"]["torch"] == now
    # another shape (views per call) is another record
    choose_runtime(model, masking, weights, views_per_call=3)
    assert len(calls) == 4 and len(list(first.record.parent.glob("auto-*.json"))) == 2


def test_auto_is_torch_when_no_other_runtime_imports(weights, monkeypatch, capsys):
    import importlib

    real = importlib.import_module

    def without_runtimes(name, *args):
        if name.split(".")[0] in ("onnxruntime", "openvino"):
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_runtimes)
    calls = _count_measurements(monkeypatch)
    assert main(["predict", str(REAL / "tree.avi"), "--checkpoint", str(weights),
                 *VIEWS]) == 0
    assert "runtime auto: torch (no other runtime installed" in capsys.readouterr().err
    assert not calls and not list(weights.glob(".mar-runtime/*"))
    monkeypatch.setattr("mar.inference.runtime.int8_dot", lambda: False)   # AVX2 only
    assert main(["predict", str(REAL / "tree.avi"), "--checkpoint", str(weights),
                 "--int8"]) == 2
    assert "none is installed: pip install 'mar-video[onnx]'" in capsys.readouterr().err
    monkeypatch.setattr("mar.inference.runtime.int8_dot", lambda: True)    # VNNI: torchao
    assert main(["predict", str(REAL / "tree.avi"), "--checkpoint", str(weights),
                 "--int8", *VIEWS]) == 0
    assert "runtime auto: torch int8 (the only int8 runtime here)" in capsys.readouterr().err
    assert not calls
    monkeypatch.setattr(importlib, "import_module", real)
    assert installed(int8=True) == ["torch", "onnxruntime", "openvino"]  # auto's int8 choice
    monkeypatch.setattr("mar.inference.runtime.int8_dot", lambda: False)
    assert installed(int8=True) == ["onnxruntime", "openvino"]


def test_auto_on_a_gpu_is_torch_without_measuring(weights, fake_gpu, monkeypatch):
    from mar.inference.runtime import choose_runtime

    calls = _count_measurements(monkeypatch)
    model, cfg = load_model(weights, device="cuda")          # the fake GPU
    choice = choose_runtime(model, cfg.test_masking(), weights)
    assert choice.runtime == "torch" and choice.model is model and not calls
    assert "the model is on cuda" in choice.line()
    with pytest.raises(ConfigError, match="--int8 runs on the CPU"):
        choose_runtime(model, cfg.test_masking(), weights, int8=True)
