"""MAR: Masked Autoencoders for Efficient Action Recognition, in plain PyTorch."""

from .masking import Mask, make_masking
from .models import MAR, MAROutput, create_model

__version__ = "0.1.0"

__all__ = ["MAR", "MAROutput", "Mask", "create_model", "make_masking", "__version__"]
