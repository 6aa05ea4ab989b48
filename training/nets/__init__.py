"""Registry of architectures: name -> constructor taking the config's ``channels``."""

from __future__ import annotations

from collections.abc import Callable

from training.nets.autoencoder import ConvAutoencoder
from training.nets.common import Denoiser
from training.nets.unet import UNet

ARCHITECTURES: dict[str, Callable[..., Denoiser]] = {
    "autoencoder": ConvAutoencoder,
    "unet": UNet,
}


def build(architecture: str, channels: list[int], noise_map: bool = False) -> Denoiser:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {sorted(ARCHITECTURES)}")
    if noise_map:
        if architecture != "unet":
            raise ValueError(f"only the unet takes a noise map, not {architecture!r}")
        return ARCHITECTURES[architecture](tuple(channels), in_channels=2)
    return ARCHITECTURES[architecture](tuple(channels))


def parameter_count(model: Denoiser) -> int:
    return sum(p.numel() for p in model.parameters())
