"""The one model call of every inference path: views in, probabilities (or the encoder's
tokens) out.

``mar eval``, ``predict``, timelines, ``extract``, ``serve`` and the demo all call
:func:`score`; it is where the test-time mask is drawn, the views go to the device,
autocast is set and a batch is split into model calls of at most ``views_per_call``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..masking import MaskingStrategy
from ..runtime.device import amp_dtype, default_views_per_call, model_device, to_device


@torch.no_grad()
def score(model, views: Tensor, masking: MaskingStrategy, *, amp: str | None = None,
          views_per_call: int | None = None, features: bool = False) -> Tensor:
    """(V, C, T, H, W) normalised views -> (V, K) softmax probabilities (float32, CPU).

    The views run on the model's device (move the model there first, e.g. with
    :func:`mar.inference.load_model`'s ``device``), ``views_per_call`` at a time (default:
    :func:`~mar.runtime.device.default_views_per_call`), under autocast ``amp``
    (``none``, ``bf16``, ``fp16``), with the deterministic evaluation mask of
    ``masking``, the same for every view. ``features=True`` returns the visible tokens
    after the encoder's final norm instead, (V, N_visible, D) in the compute dtype.
    ``model`` is a :class:`~mar.models.MAR` or anything with its ``grid``,
    ``classify`` and ``forward_features`` (a token reduction, a locked model).
    """
    device = model_device(model)
    dtype = amp_dtype(amp, device)
    per_call = views_per_call or default_views_per_call(device)
    if per_call < 1:
        raise ValueError(f"views per call must be >= 1, got {per_call}")
    out = []
    for chunk in views.split(per_call):
        chunk = to_device(chunk, device)
        mask = to_device(masking(chunk.shape[0], model.grid, train=False), device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            if features:
                out.append(model.forward_features(chunk, mask).cpu())
            else:
                out.append(model.classify(chunk, mask).float().softmax(-1).cpu())
    return torch.cat(out)
