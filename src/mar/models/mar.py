"""The MAR model: encoder + classification head + optional reconstruction decoder."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from ..masking import Mask, gather_tokens
from .decoder import ReconstructionDecoder
from .encoder import VideoEncoder
from .patch_embed import IMAGENET_MEAN, IMAGENET_STD, reconstruction_target


class MAROutput(NamedTuple):
    """What training's forward pass returns.

    logits: (B, K), None without a head (pretraining); pred and target: (B, N_masked, P),
    rows in ``mask.ids_mask`` order, None without a decoder.
    """

    logits: Tensor | None
    pred: Tensor | None = None
    target: Tensor | None = None


class MAR(nn.Module):
    """Composes an encoder, a head and, for training, a reconstruction decoder.

    Two entries, one per job: :meth:`classify` returns logits (B, K) whatever the model
    holds (every inference path calls it), and ``forward`` (training, what DDP wraps)
    returns a :class:`MAROutput` with the reconstruction branch's prediction and target
    when there is a decoder. The mask is always an input: the model never draws one;
    ``mask=None`` means every token is visible.
    """

    def __init__(self, encoder: VideoEncoder, head: nn.Module | None,
                 decoder: ReconstructionDecoder | None = None, norm_target: bool = True,
                 pixel_mean: tuple[float, ...] = IMAGENET_MEAN,
                 pixel_std: tuple[float, ...] = IMAGENET_STD):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.decoder = decoder
        self.norm_target = norm_target
        self.pixel_mean = tuple(pixel_mean)
        self.pixel_std = tuple(pixel_std)

    @property
    def grid(self) -> tuple[int, int, int]:
        return self.encoder.grid

    def forward_features(self, video: Tensor, mask: Mask | None = None) -> Tensor:
        """(B, C, T, H, W) -> visible tokens after the encoder's final norm (B, N_visible, D)."""
        return self.encoder(video, mask)

    def forward_head(self, tokens: Tensor, mask: Mask | None = None) -> Tensor:
        """(B, N_visible, D) -> logits (B, K)."""
        return self.head(tokens, mask)

    def reconstruction_target(self, video: Tensor, mask: Mask) -> Tensor:
        """Pixels of the masked tubelets, (B, N_masked, P), normalised per patch if configured."""
        pe = self.encoder.patch_embed
        target = reconstruction_target(video.detach(), pe.patch_size, pe.tubelet_size,
                                       self.pixel_mean, self.pixel_std, self.norm_target)
        return gather_tokens(target, mask.ids_mask)

    def classify(self, video: Tensor, mask: Mask | None = None) -> Tensor:
        """(B, C, T, H, W) normalised clips -> logits (B, K): the deploy path (no decoder)."""
        if self.head is None:
            raise ValueError("this model has no classifier (a pretraining model)")
        return self.forward_head(self.forward_features(video, mask), mask)

    def forward(self, video: Tensor, mask: Mask | None = None) -> MAROutput:
        """Training's output: logits and, with a decoder, the masked patches' prediction
        and target."""
        if mask is None:
            mask = Mask.full(video.shape[0], self.grid, video.device)
        tokens = self.forward_features(video, mask)
        logits = None if self.head is None else self.forward_head(tokens, mask)
        if self.decoder is None:
            return MAROutput(logits)
        pred = self.decoder(tokens, mask)
        return MAROutput(logits, pred, self.reconstruction_target(video, mask))
