"""The contract every denoiser here keeps, and the padding that lets it take any H x W."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    """Replicate-pad the bottom and right so H and W are multiples of ``multiple``.

    Replicate rather than reflect: it works for any size, a 1 x 1 image included.
    """
    height, width = x.shape[-2], x.shape[-1]
    pad_h = (multiple - height % multiple) % multiple
    pad_w = (multiple - width % multiple) % multiple
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate"), height, width


class Denoiser(nn.Module):
    """Input (N, C, H, W) in [0, 1] after the card's normalisation (channel 0 the image, channel 1
    the noise map where ``in_channels`` is 2); output (N, 1, H, W).

    Subclasses implement ``denoise_padded`` on inputs whose H and W are multiples of
    ``spatial_multiple``; ``forward`` pads and crops so callers can pass any size.
    """

    spatial_multiple: int = 1
    receptive_field: int = 1
    in_channels: int = 1

    def denoise_padded(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded, height, width = pad_to_multiple(x, self.spatial_multiple)
        return self.denoise_padded(padded)[..., :height, :width]


def conv_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True))
