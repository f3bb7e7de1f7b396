"""Loading model weights saved by mar (a checkpoint or a converted model directory)."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file
from torch import nn


def weights_file(path: str | Path) -> Path:
    """``model.safetensors`` inside a checkpoint or model directory, or the file itself."""
    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no model.safetensors (expected a mar checkpoint or "
                                "model directory, or a .safetensors file)")
    return file


def load_weights(model: nn.Module, path: str | Path,
                 allow_missing: tuple[str, ...] = (),
                 allow_unused: tuple[str, ...] = ()) -> list[str]:
    """Load strictly, except keys under the ``allow_missing`` prefixes (left as
    initialised, e.g. ``("head.",)`` when fine-tuning from a pretrained encoder) and
    file keys under the ``allow_unused`` prefixes that the model lacks (e.g. a pretrained
    decoder when fine-tuning without reconstruction).

    Returns the keys left initialised. Shape mismatches, unexpected keys and any other
    missing key are a one-line error naming the file and the first keys.
    """
    file = weights_file(path)
    state = load_file(str(file))
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.startswith(allow_unused)}
    unexpected = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    not_allowed = [k for k in missing if not k.startswith(allow_missing)]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    problems = []
    if not_allowed:
        problems.append(f"missing {len(not_allowed)} keys ({', '.join(not_allowed[:3])}, ...)")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} keys ({', '.join(unexpected[:3])}, ...)")
    if shapes:
        problems.append(f"shape mismatch: {'; '.join(shapes[:3])}")
    if problems:
        raise ValueError(f"{file}: does not fit the model: {'; '.join(problems)}")
    model.load_state_dict(state, strict=False)
    return missing
