"""MAR models: encoder, heads, decoder, and the factory that composes them."""

from .decoder import ReconstructionDecoder
from .encoder import VideoEncoder
from .factory import HEADS, SIZES, Size, create_model
from .heads import BridgingHead, LinearHead, MLPHead
from .mar import MAR, MAROutput
from .patch_embed import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PatchEmbed3D,
    patchify,
    reconstruction_target,
    sinusoid_table,
    unpatchify,
)
from .token_reduction import TokenReduction

__all__ = [
    "HEADS", "IMAGENET_MEAN", "IMAGENET_STD", "MAR", "SIZES", "BridgingHead", "LinearHead",
    "MAROutput", "MLPHead", "PatchEmbed3D", "ReconstructionDecoder", "Size", "TokenReduction",
    "VideoEncoder",
    "create_model", "patchify", "reconstruction_target", "sinusoid_table", "unpatchify",
]
