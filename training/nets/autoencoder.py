"""The convolutional autoencoder this project started from, kept as the baseline.

Conv 64 - MaxPool - Conv 128 - MaxPool - Conv 128 - Up - Conv 64 - Up - Conv 1, sigmoid: it
predicts the clean image directly (no skip connections), so fine detail must pass through the
quarter-resolution bottleneck; the U-Net exists because of that.
"""

from __future__ import annotations

import torch
from torch import nn

from training.nets.common import Denoiser, conv_relu


class ConvAutoencoder(Denoiser):
    spatial_multiple = 4
    receptive_field = 36

    def __init__(self, channels: tuple[int, int] = (64, 128)) -> None:
        super().__init__()
        wide, widest = channels
        self.encoder = nn.Sequential(
            conv_relu(1, wide), nn.MaxPool2d(2),
            conv_relu(wide, widest), nn.MaxPool2d(2),
            conv_relu(widest, widest),
        )
        self.decoder = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"), conv_relu(widest, wide),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(wide, 1, 3, padding=1),
            nn.Sigmoid(),
        )

    def denoise_padded(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
