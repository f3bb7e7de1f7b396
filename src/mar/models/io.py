"""Model I/O: find the weights of a run, checkpoint or model directory; load them
strictly; write and read mar model directories.

A **model directory** holds ``model.safetensors``, ``config.json`` (the
:func:`mar.create_model` keyword arguments, with ``name``), ``masking.json`` (the
test-time masking the weights were trained for, a ``masking`` config section such as
``{"name": "none", "ratio": 0.0}``) and, for converted weights, ``conversion.json``
(the conversion report). A **checkpoint** (``checkpoint-<step>/`` or ``best/`` of a run)
holds ``model.safetensors`` and ``state.pt``. A **run** is a training output folder.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .. import atomic
from .factory import create_model
from .mar import MAR
from .patch_embed import sinusoid_table

WEIGHTS = "model.safetensors"
MASKING = "masking.json"


class ModelFileError(ValueError):
    """Weights or a model directory that cannot be used; the message names the file."""


def weights_file(path: str | Path) -> Path:
    """The ``model.safetensors`` of a run (its ``best/``, else its newest checkpoint), a
    checkpoint or model directory, or the ``.safetensors`` file itself."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if (path / WEIGHTS).is_file():
        return path / WEIGHTS
    if (path / "best" / WEIGHTS).is_file():
        return path / "best" / WEIGHTS
    checkpoints = sorted(path.glob(f"checkpoint-*/{WEIGHTS}"))
    if checkpoints:
        return checkpoints[-1]
    raise FileNotFoundError(f"{path}: no {WEIGHTS} (expected a mar run, checkpoint or model "
                            "directory, or a .safetensors file)")


def has_decoder(path: str | Path) -> bool:
    """Whether the weights at ``path`` include a reconstruction decoder."""
    with safe_open(str(weights_file(path)), "pt") as f:
        return any(k.startswith("decoder.") for k in f.keys())  # noqa: SIM118


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
    # the file's decoder depth, counted before allow_unused drops blocks the model lacks
    depth = len({k.split(".")[2] for k in state if k.startswith("decoder.blocks.")})
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
    if any(k.startswith("decoder.") for k in shapes) and "decoder.mask_token" in state:
        problems.append(f"its decoder is {state['decoder.mask_token'].shape[-1]} wide and "
                        f"{depth} deep: set model.decoder_dim, decoder_depth and "
                        "decoder_heads to the checkpoint's")
    if problems:
        raise ModelFileError(f"{file}: does not fit the model: {'; '.join(problems)}")
    if next(model.parameters()).is_meta:  # built by empty_model: take the file's tensors
        if missing:
            raise ValueError(f"a model built on the meta device needs every key; {file} "
                             f"lacks {', '.join(missing[:3])}")
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()},
                              strict=False, assign=True)
        for module in model.modules():  # the fixed tables are not saved: compute them
            if isinstance(getattr(module, "pos_embed", None), torch.Tensor) \
                    and module.pos_embed.is_meta:
                module.pos_embed = sinusoid_table(*module.pos_embed.shape[1:])
    else:
        model.load_state_dict(state, strict=False)
    return missing


def empty_model(build=create_model, /, **kwargs) -> MAR:
    """``build(**kwargs)`` on the meta device: no memory and no init, for weights that
    :func:`load_weights` is about to load in full (initialising ViT-B costs seconds)."""
    with torch.device("meta"):
        return build(**kwargs)


def save_model(model: nn.Module, config: dict, path: str | Path, *, masking: dict,
               overwrite: bool = False, report=None) -> Path:
    """Write the model directory ``path`` atomically (see the module docstring).

    ``config`` must rebuild ``model`` (checked on the meta device); ``masking`` is the
    test-time masking, e.g. ``{"name": "none", "ratio": 0.0}`` for weights trained on all
    tokens. An existing ``path`` is an error unless ``overwrite``; it is replaced only
    once the new directory is complete, and kept if anything fails.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ModelFileError(f"{path}: already exists (overwrite=True, --overwrite, "
                             "replaces it)")
    if not isinstance(masking, dict) or "name" not in masking:
        raise ModelFileError(f"{path}: masking must be a masking section with a name, "
                             f"got {masking!r}")
    weights = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    _check_config(config, weights, path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        save_file(weights, str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=1) + "\n")
        (tmp / MASKING).write_text(json.dumps(masking, indent=1) + "\n")
        if report is not None:
            record = dataclasses.asdict(report)
            (tmp / "conversion.json").write_text(json.dumps(record, indent=1) + "\n")

    return atomic.write_dir(path, write)


def read_model_dir(path: str | Path) -> tuple[dict, dict | None]:
    """``config.json`` and ``masking.json`` (None if absent) of a model directory."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file() or not (path / WEIGHTS).is_file():
        raise ModelFileError(f"{path}: not a mar model directory (expected config.json and "
                             f"{WEIGHTS})")
    config = _read_json(config_file)
    if not isinstance(config, dict) or "name" not in config:
        raise ModelFileError(f"{config_file}: expected the create_model arguments with 'name'")
    masking = _read_json(path / MASKING) if (path / MASKING).is_file() else None
    if masking is not None and not (isinstance(masking, dict) and "name" in masking):
        raise ModelFileError(f"{path / MASKING}: expected a masking section with a name")
    return config, masking


def load_model_dir(path: str | Path) -> tuple[MAR, dict]:
    """The model of a mar model directory, loaded strictly, and its ``create_model``
    arguments (eval mode): a converter's round trip. Users load any run, checkpoint or
    model directory with :func:`mar.load_model`, which also gives the settings."""
    config, _ = read_model_dir(path)
    try:
        model = empty_model(**config)
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"{Path(path) / 'config.json'}: {e}") from None
    load_weights(model, path)
    return model.eval(), config


def _read_json(file: Path):
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{file}: not valid JSON ({e})") from None


def _check_config(config: dict, weights: dict[str, torch.Tensor], path: Path) -> None:
    try:
        with torch.device("meta"):
            expected = create_model(**config).state_dict()
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"{path}: config does not build a model: {e}") from None
    wrong = sorted(set(expected) ^ set(weights)) + [
        k for k in expected if k in weights and expected[k].shape != weights[k].shape]
    if wrong:
        raise ModelFileError(f"{path}: config does not describe this model "
                             f"(differs at {', '.join(wrong[:3])})")
