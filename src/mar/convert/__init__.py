"""Loading the weights users have (VideoMAE, transformers, image MAE, official MAR)
strictly, and saving them in mar's own format. See docs/weights.md."""

from ..models.io import ModelFileError, load_model, save_model
from .convert import convert_checkpoint
from .formats import FORMAT_NAMES, detect_format
from .reader import Checkpoint, read_checkpoint
from .report import ConversionError, ConversionReport

__all__ = [
    "FORMAT_NAMES", "Checkpoint", "ConversionError", "ConversionReport", "ModelFileError",
    "convert_checkpoint", "detect_format", "load_model", "read_checkpoint", "save_model",
]
