"""U-Net with skip connections and a residual output: the main model.

It predicts the noise and subtracts it (``x - f(x)``, residual learning as in DnCNN), so an
identity is easy to represent and the network spends its capacity on the noise, not on
re-synthesising anatomy. Two 2x poolings: inputs are padded to multiples of 4.

With ``in_channels`` 2 it is conditioned on the noise level (FFDNet, DRUNet): channel 0 is the
noisy image, channel 1 the per-pixel noise standard deviation in the same unit range. One network
then covers every level, and the level it is told is a real control over how much it removes.
"""

from __future__ import annotations

import torch
from torch import nn

from training.nets.common import Denoiser, conv_relu


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(conv_relu(in_channels, out_channels), conv_relu(out_channels, out_channels))


class UNet(Denoiser):
    spatial_multiple = 4
    receptive_field = 68

    def __init__(self, channels: tuple[int, int, int] = (32, 64, 128), in_channels: int = 1) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.in_channels = in_channels
        self.enc1 = _double_conv(in_channels, c1)
        self.enc2 = _double_conv(c1, c2)
        self.bottleneck = _double_conv(c2, c3)
        self.pool = nn.MaxPool2d(2)
        self.up2 = nn.ConvTranspose2d(c3, c2, 2, stride=2)
        self.dec2 = _double_conv(2 * c2, c2)
        self.up1 = nn.ConvTranspose2d(c2, c1, 2, stride=2)
        self.dec1 = _double_conv(2 * c1, c1)
        self.head = nn.Conv2d(c1, 1, 1)

    def denoise_padded(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.enc1(x)
        s2 = self.enc2(self.pool(s1))
        bottom = self.bottleneck(self.pool(s2))
        d2 = self.dec2(torch.cat([self.up2(bottom), s2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), s1], dim=1))
        return x[:, :1] - self.head(d1)
