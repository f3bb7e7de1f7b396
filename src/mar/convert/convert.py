"""``convert_checkpoint``: read, rename, pick the model from the shapes, load strictly."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..masking import make_masking
from ..models import MAR, SIZES, create_model, sinusoid_table
from .architecture import CUSTOM, Architecture, infer_architecture
from .formats import Format, Hints, detect_format, get_format
from .reader import read_checkpoint
from .report import ConversionError, ConversionReport, describe_masking
from .rules import Mapped, apply_rules


def convert_checkpoint(src: str | Path, *, format: str = "auto", num_classes: int | None = None,
                       drop_head: bool = False, decoder: bool | None = None,
                       num_frames: int | None = None, img_size: int | None = None,
                       head: str | None = None, tubelet_size: int = 2,
                       num_heads: int | None = None, decoder_heads: int | None = None,
                       test_masking: str | None = None, mask_ratio: float | None = None,
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
    num_heads / decoder_heads: attention heads of the encoder / decoder, which the weights
    do not store (default: the transformers config's, else mar's size of that width).
    test_masking / mask_ratio: the test-time masking to record (``none`` or
    ``cell_running``; default: the one the source was trained for: ``cell_running`` 0.5
    for the official MAR code, ``none`` for every other format).

    Any width, depth, head count and MLP ratio converts: a model that is a ``SIZES``
    entry keeps its name; another is named ``custom`` and ``report.config`` carries its
    ``embed_dim``, ``depth``, ``num_heads`` and ``mlp_ratio``.

    Returns the model (eval mode) and the report; ``report.config`` holds the
    ``create_model`` arguments and ``report.masking`` the test-time masking (the
    ``masking`` of :func:`mar.models.io.save_model`). Raises :class:`ConversionError`
    (one line, with the report so far) when a weight the model needs is missing, a shape
    differs, or, unless ``allow_unexpected``, a key of the file is used by no rule.
    """
    ckpt = read_checkpoint(src)
    report = ConversionReport(str(src), format, notes=list(ckpt.notes))
    try:
        model = _convert(ckpt.state, ckpt.config, report, num_classes=num_classes,
                         drop_head=drop_head, decoder=decoder, num_frames=num_frames,
                         img_size=img_size, head=head, tubelet_size=tubelet_size,
                         num_heads=num_heads, decoder_heads=decoder_heads,
                         test_masking=test_masking, mask_ratio=mask_ratio,
                         allow_unexpected=allow_unexpected)
    except ConversionError as e:          # name the file, keep the report so far
        raise ConversionError(f"{src}: {e}", report) from None
    return model.eval(), report


def _convert(state: dict[str, Tensor], config: dict | None, report: ConversionReport, *,
             num_classes: int | None, drop_head: bool, decoder: bool | None,
             num_frames: int | None, img_size: int | None, head: str | None,
             tubelet_size: int, num_heads: int | None, decoder_heads: int | None,
             test_masking: str | None, mask_ratio: float | None, allow_unexpected: bool) -> MAR:
    fmt = get_format(detect_format(state, config) if report.format == "auto" else report.format)
    report.format = fmt.name
    report.masking, report.masking_reason = _choose_masking(fmt, test_masking, mask_ratio)
    mapped = apply_rules(state, fmt.rules, fmt.strip)
    report.dropped, report.unexpected = mapped.dropped, list(mapped.unexpected)
    if not mapped.state:
        raise ConversionError(f"no key matches the {fmt.name} layout ({fmt.description}); "
                              f"the file starts with {', '.join(list(state)[:3])}")
    hints = Hints(config=config, tubelet_size=tubelet_size)
    if fmt.adapt is not None:
        fmt.adapt(mapped, hints, state)
    arch = infer_architecture(mapped.state, hints, num_heads=num_heads,
                              decoder_heads=decoder_heads)
    report.notes += hints.notes
    new: dict[str, str] = {}          # our key prefix -> why it starts new
    head, num_classes = _choose_head(mapped, arch, hints, head, num_classes, drop_head, new)
    decoder = _choose_decoder(mapped, arch, decoder, new)
    head_from_file = arch.head is not None and "head." not in new and head != "none"
    report.config = _model_config(arch, hints, head, num_classes, decoder, num_frames,
                                  img_size, head_from_file)
    try:
        model = create_model(**report.config)
    except (ValueError, RuntimeError) as e:
        raise ConversionError(str(e)) from None
    try:
        make_masking(**report.masking)(1, model.grid, train=False)
    except ValueError as e:
        raise ConversionError(f"test-time masking {describe_masking(report.masking)}: {e} "
                              "(test_masking / --test-masking, mask_ratio / --mask-ratio "
                              "choose another)") from None
    _load_strict(model, mapped, new, report, allow_unexpected)
    report.notes += [note for key, note in hints.notes_if_loaded.items() if key in report.loaded]
    report.notes += _position_table_notes(state, report.dropped)
    dtypes = {str(v.dtype).removeprefix("torch.") for v in mapped.state.values()}
    if dtypes - {"float32"}:
        report.notes.append(f"weights stored as {', '.join(sorted(dtypes))}; loaded as float32")
    return model


TEST_MASKINGS = ("none", "cell_running")


def _choose_masking(fmt: Format, name: str | None,
                    ratio: float | None) -> tuple[dict, str]:
    """The test-time masking to record: the caller's, else the source format's."""
    if name is None:
        if ratio is None or ratio == fmt.masking["ratio"]:
            return dict(fmt.masking), fmt.masking_reason
        name = fmt.masking["name"]
    if name not in TEST_MASKINGS:
        raise ConversionError(f"test masking {name!r}: expected one of {', '.join(TEST_MASKINGS)}")
    if ratio is None:
        ratio = 0.0 if name == "none" else 0.5
    if name == "none" and ratio != 0:
        raise ConversionError(f"mask ratio {ratio} with test masking 'none': pass "
                              "test_masking='cell_running' (--test-masking cell_running)")
    return {"name": name, "ratio": float(ratio)}, "set by test_masking / mask_ratio"


def _choose_head(mapped: Mapped, arch: Architecture, hints: Hints, head: str | None,
                 num_classes: int | None, drop_head: bool,
                 new: dict[str, str]) -> tuple[str, int | None]:
    """The head to build and its class count; drops the file's classifier when asked."""
    head = head or arch.head or "bridging"
    if arch.head is None or head == "none":
        if head == "none" and arch.head is not None:
            _drop_prefix(mapped, "head.", "no classifier requested (head='none')")
        elif head != "none":
            if num_classes is None:
                raise ConversionError("the checkpoint has no classifier: pass num_classes "
                                      "(--num-classes) for the new head")
            new["head."] = f"new {head} head: the checkpoint has no classifier"
        return head, num_classes
    if not drop_head:
        fix = "pass drop_head=True (--drop-head) to start a new head"
        if hints.head_problem:
            raise ConversionError(f"{hints.head_problem}: {fix}")
        if head != arch.head:
            raise ConversionError(f"the checkpoint's classifier is a {arch.head} head, not "
                                  f"{head}: {fix}")
        if num_classes not in (None, arch.num_classes):
            raise ConversionError(f"the checkpoint's head has {arch.num_classes} classes but "
                                  f"num_classes={num_classes}: {fix}")
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
    """The ``create_model`` keyword arguments (saved as config.json): the SIZES name, or
    ``custom`` with the explicit encoder dims."""
    config = {"name": arch.name, "num_frames": num_frames or hints.num_frames or 16,
              "img_size": img_size or hints.img_size or 224, "patch_size": arch.patch_size,
              "tubelet_size": arch.tubelet_size, "in_chans": arch.in_chans}
    if arch.name == CUSTOM:
        config |= arch.encoder_dims()
    config |= {"final_norm": arch.final_norm, "head": head}
    if head != "none":
        config["num_classes"] = num_classes
    if head_from_file and head == "bridging":
        config |= {"head_width": arch.head_width, "head_depth": arch.head_depth,
                   "head_heads": arch.head_heads}
    config["decoder"] = decoder
    if decoder and arch.decoder_dim is not None:
        config |= {"decoder_dim": arch.decoder_dim, "decoder_depth": arch.decoder_depth,
                   "decoder_heads": arch.decoder_heads}
        default = SIZES[arch.name].decoder_mlp_ratio if arch.name in SIZES else 4.0
        if int(arch.decoder_dim * default) != int(arch.decoder_dim * arch.decoder_mlp_ratio):
            config["decoder_mlp_ratio"] = arch.decoder_mlp_ratio
    elif decoder and arch.name == CUSTOM:          # a new decoder for a custom encoder
        same = next((s for s in SIZES.values() if s.embed_dim == arch.embed_dim), None)
        if same is None:
            raise ConversionError(f"no VideoMAE decoder is known for width {arch.embed_dim}: "
                                  "convert without a decoder and set model.decoder_dim, "
                                  "decoder_depth and decoder_heads in the training config")
        config |= {"decoder_dim": same.decoder_dim, "decoder_depth": same.decoder_depth,
                   "decoder_heads": same.decoder_heads,
                   "decoder_mlp_ratio": same.decoder_mlp_ratio}
    if hints.pixel_mean is not None:
        config |= {"pixel_mean": list(hints.pixel_mean), "pixel_std": list(hints.pixel_std)}
    return config


def _load_strict(model: MAR, mapped: Mapped, new: dict[str, str], report: ConversionReport,
                 allow_unexpected: bool) -> None:
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
    report.loaded = [k for k in own if k in mapped.state]
    shapes = [f"{k} {list(v.shape)} in the file, {list(own[k].shape)} in the model"
              for k, v in mapped.state.items() if k in own and v.shape != own[k].shape]
    if report.missing:
        raise ConversionError(f"{len(report.missing)} weights the model needs are not in the "
                              f"file: {_first(report.missing)}")
    if shapes:
        raise ConversionError(f"shape mismatch: {_first(shapes)}")
    if report.unexpected and not allow_unexpected:
        raise ConversionError(f"{len(report.unexpected)} keys of the file are used by no rule: "
                              f"{_first(report.unexpected)} (allow_unexpected=True, "
                              "--allow-unexpected, converts anyway)")
    model.load_state_dict({k: v for k, v in mapped.state.items() if k in own}, strict=False)


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
