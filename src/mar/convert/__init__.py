"""Loading the weights users have (VideoMAE, transformers, image MAE, official MAR)
strictly, and saving them in mar's own format. See docs/weights.md.

The names below are imported on first use, so that the CLI can build its parser (which
imports :mod:`mar.convert.names`) without importing torch."""

from importlib import import_module

from .names import FORMAT_NAMES

_WHERE = {
    "ModelFileError": "..models.io", "load_model_dir": "..models.io", "save_model": "..models.io",
    "convert_checkpoint": ".convert", "detect_format": ".formats",
    "Checkpoint": ".reader", "read_checkpoint": ".reader",
    "ConversionError": ".report", "ConversionReport": ".report",
}

__all__ = ["FORMAT_NAMES", *_WHERE]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_WHERE[name], __name__), name)
