"""MAR: Masked Autoencoders for Efficient Action Recognition, in plain PyTorch.

``mar.create_model``, ``mar.make_masking`` and the rest are imported on first use, so
that ``mar --help`` answers without importing torch."""

from importlib import import_module

_WHERE = {"MAR": ".models", "MAROutput": ".models", "create_model": ".models",
          "Mask": ".masking", "make_masking": ".masking", "load_model": ".inference.load"}

__all__ = ["MAR", "MAROutput", "Mask", "create_model", "load_model", "make_masking",
           "__version__"]


def __getattr__(name: str):
    if name == "__version__":  # the installed mar-video's
        return import_module(".distribution", __name__).version()
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_WHERE[name], __name__), name)
