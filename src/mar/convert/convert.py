"""``convert_checkpoint``: read, rename, pick the model from the shapes, load strictly."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..models import MAR, create_model, sinusoid_table
from .architecture import Architecture, infer_architecture
from .formats import Hints, detect_format, get_format
from .reader import read_checkpoint
from .report import ConversionError, ConversionReport
from .rules import Mapped, apply_rules


def convert_checkpoint(src: str | Path, *, format: str = "auto", num_classes: int | None = None,
                       drop_head: bool = False, decoder: bool | None = None,
                       num_frames: int | None = None, img_size: int | None = None,
                       head: str | None = None, tubelet_size: int = 2,
                       allow_unexpected: bool = False) -> tuple[MAR, ConversionReport]:
    """Build the mar model a checkpoint describes and load its weights strictly.

    format: ``auto``, ``videomae``, ``hf``, ``mae`` or ``mar`` (official MAR code).
    head: the classifier to build; by default the file's (``linear`` for VideoMAE and
    transformers classifiers, ``bridging`` for MAR), or a new ``bridging`` head when the
    file has none (then ``num_classes`` is required). A file classifier with another
    class count or type is an error unless ``drop_head`` (then a new head starts).
    decoder: ``None`` keeps the file's reconstruction decoder if it has one; ``True`` adds
    a new one when it has none; ``False`` drops it.
    num_frames / img_size: the clip the model is built for (default: the transformers
    config's, else 16 x 224). The position tables are fixed sinusoids rebuilt from these,
    so any clip size loads the same weights.
    tubelet_size: frames per tubelet when inflating 2-D image weights.

    Returns the model (eval mode) and the report; ``report.config`` holds the
    ``create_model`` arguments. Raises :class:`ConversionError` (one line, with the report
    so far) when a weight the model needs is missing, a shape differs, or, unless
    ``allow_unexpected``, a key of the file is used by no rule.
    """
    ckpt = read_checkpoint(src)
    fmt = get_format(detect_format(ckpt.state, ckpt.config) if format == "auto" else format)
    mapped = apply_rules(ckpt.state, fmt.rules, fmt.strip)
    report = ConversionReport(str(src), fmt.name, dropped=mapped.dropped,
                              unexpected=list(mapped.unexpected), notes=list(ckpt.notes))
    if not mapped.state:
        raise ConversionError(f"{src}: no key matches the {fmt.name} layout "
                              f"({fmt.description}); the file starts with "
                              f"{', '.join(list(ckpt.state)[:3])}", report)
    hints = Hints(config=ckpt.config, tubelet_size=tubelet_size)
    if fmt.adapt is not None:
        fmt.adapt(mapped, hints, ckpt.state)
    report.notes += hints.notes
    try:
        arch = infer_architecture(mapped.state, hints)
    except ConversionError as e:
        raise ConversionError(f"{src}: {e}", report) from None
    new: dict[str, str] = {}          # our key prefix -> why it starts new
    head, num_classes = _choose_head(mapped, arch, hints, head, num_classes, drop_head, new,
                                     src, report)
    decoder = _choose_decoder(mapped, arch, decoder, new)
    head_from_file = arch.head is not None and "head." not in new and head != "none"
    config = _model_config(arch, hints, head, num_classes, decoder, num_frames, img_size,
                           head_from_file)
    try:
        model = create_model(**config)
    except ValueError as e:
        raise ConversionError(f"{src}: {e}", report) from None
    report.config = config
    _load_strict(model, mapped, new, report, allow_unexpected, src)
    report.notes += _position_table_notes(ckpt.state, report.dropped)
    dtypes = {str(v.dtype).removeprefix("torch.") for v in mapped.state.values()}
    if dtypes - {"float32"}:
        report.notes.append(f"weights stored as {', '.join(sorted(dtypes))}; loaded as float32")
    return model.eval(), report


def _choose_head(mapped: Mapped, arch: Architecture, hints: Hints, head: str | None,
                 num_classes: int | None, drop_head: bool, new: dict[str, str],
                 src: str | Path, report: ConversionReport) -> tuple[str, int | None]:
    """The head to build and its class count; drops the file's classifier when asked."""
    head = head or arch.head or "bridging"
    if arch.head is None or head == "none":
        if head == "none" and arch.head is not None:
            _drop_prefix(mapped, "head.", "no classifier requested (head='none')")
        elif head != "none":
            if num_classes is None:
                raise ConversionError(f"{src}: the checkpoint has no classifier: pass "
                                      "num_classes (--num-classes) for the new head", report)
            new["head."] = f"new {head} head: the checkpoint has no classifier"
        return head, num_classes
    if not drop_head:
        fix = "pass drop_head=True (--drop-head) to start a new head"
        if hints.head_problem:
            raise ConversionError(f"{src}: {hints.head_problem}: {fix}", report)
        if head != arch.head:
            raise ConversionError(f"{src}: the checkpoint's classifier is a {arch.head} head, "
                                  f"not {head}: {fix}", report)
        if num_classes not in (None, arch.num_classes):
            raise ConversionError(f"{src}: the checkpoint's head has {arch.num_classes} "
                                  f"classes but num_classes={num_classes}: {fix}", report)
        return head, arch.num_classes
    num_classes = num_classes or arch.num_classes
    _drop_prefix(mapped, "head.", f"classifier not used (drop_head): a new {head} head with "
                                  f"{num_classes} classes starts instead")
    new["head."] = f"new {head} head with {num_classes} classes (drop_head)"
    return head, num_classes


def _choose_decoder(mapped: Mapped, arch: Architecture, decoder: bool | None,
                    new: dict[str, str]) -> bool:
    has = arch.decoder_dim is not None
    if decoder is None:
        return has
    if has and not decoder:
        _drop_prefix(mapped, "decoder.", "reconstruction decoder not requested (decoder=False)")
    if decoder and not has:
        new["decoder."] = "new reconstruction decoder: the checkpoint has none"
    return decoder


def _drop_prefix(mapped: Mapped, prefix: str, reason: str) -> None:
    for key in [k for k in mapped.state if k.startswith(prefix)]:
        mapped.pop(key, reason)


def _model_config(arch: Architecture, hints: Hints, head: str, num_classes: int | None,
                  decoder: bool, num_frames: int | None, img_size: int | None,
                  head_from_file: bool) -> dict:
    """The ``create_model`` keyword arguments (saved as config.json)."""
    config = {"name": arch.name, "num_frames": num_frames or hints.num_frames or 16,
              "img_size": img_size or hints.img_size or 224, "patch_size": arch.patch_size,
              "tubelet_size": arch.tubelet_size, "in_chans": arch.in_chans,
              "final_norm": arch.final_norm, "head": head}
    if head != "none":
        config["num_classes"] = num_classes
    if head_from_file and head == "bridging":
        config |= {"head_width": arch.head_width, "head_depth": arch.head_depth,
                   "head_heads": arch.head_heads}
    config["decoder"] = decoder
    if decoder and arch.decoder_dim is not None:
        config |= {"decoder_dim": arch.decoder_dim, "decoder_depth": arch.decoder_depth,
                   "decoder_heads": arch.decoder_heads}
    if hints.pixel_mean is not None:
        config |= {"pixel_mean": list(hints.pixel_mean), "pixel_std": list(hints.pixel_std)}
    return config


def _load_strict(model: MAR, mapped: Mapped, new: dict[str, str], report: ConversionReport,
                 allow_unexpected: bool, src: str | Path) -> None:
    own = model.state_dict()
    for key in own:
        if key in mapped.state:
            continue
        reason = next((why for prefix, why in new.items() if key.startswith(prefix)), None)
        if reason is None:
            report.missing.append(key)
        else:
            report.initialised[key] = reason
    report.unexpected += [mapped.sources[k] for k in mapped.state if k not in own]
    shapes = [f"{k} {list(v.shape)} in the file, {list(own[k].shape)} in the model"
              for k, v in mapped.state.items() if k in own and v.shape != own[k].shape]
    if report.missing:
        raise ConversionError(f"{src}: {len(report.missing)} weights the model needs are not in "
                              f"the file: {_first(report.missing)}", report)
    if shapes:
        raise ConversionError(f"{src}: shape mismatch: {_first(shapes)}", report)
    if report.unexpected and not allow_unexpected:
        raise ConversionError(f"{src}: {len(report.unexpected)} keys of the file are used by no "
                              f"rule: {_first(report.unexpected)} (allow_unexpected=True, "
                              "--allow-unexpected, converts anyway)", report)
    model.load_state_dict({k: v for k, v in mapped.state.items() if k in own}, strict=False)
    report.loaded = [k for k in own if k in mapped.state]


def _first(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _position_table_notes(state: dict[str, Tensor], dropped: dict[str, str]) -> list[str]:
    """Say which dropped position tables were learned (their information is lost)."""
    notes = []
    for key in dropped:
        table = state.get(key)
        if table is None or table.ndim != 3 or not ("pos" in key or "position" in key):
            continue
        n, d = table.shape[-2:]
        if not torch.allclose(table.float()[:1], sinusoid_table(n, d), atol=1e-4):
            notes.append(f"{key} is a learned position table, not the fixed sinusoid one: "
                         "mar does not use it, so outputs differ from the source model's")
    return notes
