"""Every architecture keeps the contract: (N, 1, H, W) in, the same shape out, any H x W."""

from __future__ import annotations

import pytest
import torch

from training.nets import ARCHITECTURES, build, parameter_count

CHANNELS = {"unet": [8, 16, 32], "autoencoder": [8, 16]}


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
@pytest.mark.parametrize("size", [(37, 31), (64, 64), (5, 9), (1, 1), (130, 67)])
def test_output_shape_matches_input_at_odd_sizes(architecture: str, size: tuple[int, int]) -> None:
    model = build(architecture, CHANNELS[architecture]).eval()
    x = torch.rand(2, 1, *size)
    with torch.inference_mode():
        y = model(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


def test_autoencoder_output_is_in_unit_range() -> None:
    model = build("autoencoder", CHANNELS["autoencoder"]).eval()
    with torch.inference_mode():
        y = model(torch.rand(1, 1, 40, 40) * 3 - 1)
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_unet_is_residual_so_a_zero_head_is_the_identity() -> None:
    model = build("unet", CHANNELS["unet"]).eval()
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    x = torch.rand(1, 1, 37, 31)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), x)


def test_unknown_architecture_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        build("dncnn-9000", [1])


def test_parameter_counts_of_the_served_sizes() -> None:
    assert parameter_count(build("unet", [16, 32, 64])) == 116_753
    assert parameter_count(build("autoencoder", [64, 128])) == 296_449


@pytest.mark.parametrize("size", [(37, 31), (5, 3), (64, 64)])
def test_conditioned_unet_takes_image_and_map_at_odd_sizes(size: tuple[int, int]) -> None:
    model = build("unet", [8, 16, 32], noise_map=True).eval()
    assert model.in_channels == 2
    x = torch.rand(2, 2, *size)
    with torch.inference_mode():
        out = model(x)
    assert out.shape == (2, 1, *size)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        assert torch.equal(model(x), x[:, :1])  # residual on the image channel, the map only informs


def test_only_the_unet_takes_a_noise_map() -> None:
    with pytest.raises(ValueError, match="noise map"):
        build("autoencoder", [8, 16], noise_map=True)
