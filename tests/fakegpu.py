"""A fake GPU for CPU tests of the GPU paths (the ``fake_gpu`` fixture)."""

from __future__ import annotations

import sys

import pytest
import torch


def keep_tf32():
    """The TF32 settings now; call the returned function to put them back (a command that
    takes the GPU turns TF32 on for the whole process). Attributes of torch's backend
    objects, not patchable with ``monkeypatch.setattr`` on every pytest."""
    backends = (torch.backends.cuda.matmul, torch.backends.cudnn.conv)
    saved = [b.fp32_precision for b in backends]

    def restore():
        for backend, value in zip(backends, saved, strict=True):
            backend.fp32_precision = value

    return restore


class Moves(list):
    """(what, device) of every move to the GPU, and the arguments recorded beside."""

    def __init__(self):
        super().__init__()
        self.tensor_kwargs: list[dict] = []
        self.loaders: list[dict] = []
        self.optimizers: list[dict] = []


@pytest.fixture
def fake_gpu(monkeypatch, request):
    """A machine that says it has one CUDA GPU: ``.to("cuda")`` of modules and tensors is
    recorded (``moves``) and done on the CPU; a module's device is the one it was last
    moved to. What a command does not move to the GPU is not recorded.

    Also recorded: each tensor move's keyword arguments (``moves.tensor_kwargs``), every
    ``DataLoader``'s (``moves.loaders``; pinning is then switched off, there being no
    GPU to pin for) and every AdamW's (``moves.optimizers``)."""
    moves = Moves()
    placed: dict[int, torch.device] = {}
    tensor_to, module_to = torch.Tensor.to, torch.nn.Module.to

    def redirect(args, kwargs):
        found, args = None, list(args)
        for i, a in enumerate(args):
            if isinstance(a, str | torch.device) and torch.device(a).type == "cuda":
                found, args[i] = torch.device(a), "cpu"
        d = kwargs.get("device")
        if isinstance(d, str | torch.device) and torch.device(d).type == "cuda":
            found, kwargs["device"] = torch.device(d), "cpu"
        return found, args, kwargs

    def fake_tensor_to(self, *args, **kwargs):
        found, args, kwargs = redirect(args, kwargs)
        if found is not None:
            moves.append(("tensor", str(found)))
            moves.tensor_kwargs.append(dict(kwargs))
        return tensor_to(self, *args, **kwargs)

    def fake_module_to(self, *args, **kwargs):
        found, args, kwargs = redirect(args, kwargs)
        if found is not None:
            moves.append((type(self).__name__, str(found)))
            placed[id(self)] = found
        return module_to(self, *args, **kwargs)

    import mar.runtime.device as device

    real_model_device = device.model_device

    def fake_model_device(model):
        return placed.get(id(model), real_model_device(model))

    monkeypatch.setattr(torch.Tensor, "to", fake_tensor_to)
    monkeypatch.setattr(torch.nn.Module, "to", fake_module_to)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: 0)
    # an optimizer step asks the (absent) GPU whether a CUDA graph is being captured
    monkeypatch.setattr(torch.optim.Optimizer, "_accelerator_graph_capture_health_check",
                        lambda self: None, raising=False)
    request.addfinalizer(keep_tf32())
    loader_init, adamw_init = torch.utils.data.DataLoader.__init__, torch.optim.AdamW.__init__

    def fake_loader_init(self, *args, **kwargs):
        moves.loaders.append(dict(kwargs))
        return loader_init(self, *args, **(kwargs | {"pin_memory": False}))

    def fake_adamw_init(self, *args, **kwargs):
        moves.optimizers.append(dict(kwargs))
        return adamw_init(self, *args, **kwargs)

    monkeypatch.setattr(torch.utils.data.DataLoader, "__init__", fake_loader_init)
    monkeypatch.setattr(torch.optim.AdamW, "__init__", fake_adamw_init)
    for module in list(sys.modules.values()):    # every `from .device import model_device`
        if getattr(module, "model_device", None) is real_model_device:
            monkeypatch.setattr(module, "model_device", fake_model_device)
    return moves
