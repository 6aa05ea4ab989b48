"""Tiny ONNX models with real cards, built on the fly so the service's tests never need training.

The graphs are a reflect pad and a single 3 x 3 convolution (a mean filter, or the identity), with
the contract the real models follow: input ``noisy`` and output ``denoised``, NCHW float32,
dynamic batch / H / W, borders handled inside the model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from app.inference.normalisation import NormalisationSpec
from app.inference.card import ModelCard, NoiseMapSpec, NoiseModelSpec, TensorSpec, write_card

NORMALISATION = {
    "ct": NormalisationSpec(kind="fixed", low=-1024, high=3071, units="HU"),
    "mr": NormalisationSpec(kind="image_percentile", high_percentile=99.5),
    "xray": NormalisationSpec(kind="image_percentile", low_percentile=0.5, high_percentile=99.5),
}


def conv_model(kernel: np.ndarray) -> onnx.ModelProto:
    """One single-channel convolution after reflect padding, so the size is kept."""
    size = kernel.shape[0]
    half = size // 2
    weight = numpy_helper.from_array(kernel.astype(np.float32).reshape(1, 1, size, size), "weight")
    pads = numpy_helper.from_array(np.array([0, 0, half, half, 0, 0, half, half], np.int64), "pads")
    nodes = [
        helper.make_node("Pad", ["noisy", "pads"], ["padded"], mode="reflect"),
        helper.make_node("Conv", ["padded", "weight"], ["denoised"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("noisy", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info("denoised", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        initializer=[weight, pads],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # old enough for every onnxruntime we support
    return model


MEAN_3X3 = np.full((3, 3), 1 / 9)
IDENTITY_3X3 = np.pad(np.ones((1, 1)), 1)


def write_model(
    root: Path,
    modality: str,
    architecture: str,
    kernel: np.ndarray = MEAN_3X3,
    default: bool = True,
    spatial_multiple: int = 8,
    normalisation: NormalisationSpec | None = None,
) -> Path:
    directory = root / modality / architecture
    directory.mkdir(parents=True, exist_ok=True)
    data = conv_model(kernel).SerializeToString()
    (directory / "model.onnx").write_bytes(data)
    card = ModelCard(
        id=f"{modality}-{architecture}",
        modality=modality,  # type: ignore[arg-type]
        architecture=architecture,
        version="0.0.1-test",
        default=default,
        sha256=hashlib.sha256(data).hexdigest(),
        parameters=int(kernel.size),
        input=TensorSpec(name="noisy"),
        output=TensorSpec(name="denoised"),
        spatial_multiple=spatial_multiple,
        receptive_field=kernel.shape[0],
        normalisation=normalisation or NORMALISATION[modality],
        noise_model=NoiseModelSpec(
            kind="gaussian", description="test", parameter="sigma", train_range=(0.0, 1.0), default_level=0.1
        ),
        training_data={},
        training_config={},
        validation_metrics={},
        code_version="test",
        command="tests/tiny_models.py",
        created="2025-01-01T00:00:00Z",
    )
    write_card(directory, card)
    return directory


def conditioned_model(gain: float) -> onnx.ModelProto:
    """A noise-level-conditioned stand-in: input [N, 2, H, W] (image, noise map), output the image
    moved towards its 3 x 3 mean by clip(gain * map, 0, 1): more noise told, more smoothing."""
    weight = numpy_helper.from_array(MEAN_3X3.astype(np.float32).reshape(1, 1, 3, 3), "weight")
    constants = [
        numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([2], np.int64), "two"),
        numpy_helper.from_array(np.array(gain, np.float32), "gain"),
        numpy_helper.from_array(np.array(0.0, np.float32), "low"),
        numpy_helper.from_array(np.array(1.0, np.float32), "high"),
    ]
    nodes = [
        helper.make_node("Slice", ["noisy", "zero", "one", "one"], ["image"]),
        helper.make_node("Slice", ["noisy", "one", "two", "one"], ["sigma"]),
        helper.make_node("Pad", ["image", "pads"], ["padded"], mode="reflect"),
        helper.make_node("Conv", ["padded", "weight"], ["mean"]),
        helper.make_node("Mul", ["sigma", "gain"], ["scaled"]),
        helper.make_node("Clip", ["scaled", "low", "high"], ["alpha"]),
        helper.make_node("Sub", ["mean", "image"], ["towards"]),
        helper.make_node("Mul", ["alpha", "towards"], ["step"]),
        helper.make_node("Add", ["image", "step"], ["denoised"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-conditioned",
        [helper.make_tensor_value_info("noisy", TensorProto.FLOAT, ["N", 2, "H", "W"])],
        [helper.make_tensor_value_info("denoised", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        initializer=[weight, *constants],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


NOISE_MAPS = {
    "ct": NoiseMapSpec(estimator="constant", signal_range=(-300.0, 300.0), level_units="HU"),
    "mr": NoiseMapSpec(estimator="constant", signal_range_of_robust_max=(0.2, 10.0), level_units="%"),
    "xray": NoiseMapSpec(estimator="signal_dependent", level_units="stored value"),
}


def write_conditioned_model(root: Path, modality: str, architecture: str = "unet", gain: float = 20.0,
                            default: bool = True, non_negative: bool | None = None) -> Path:
    """A tiny conditioned model with the card a real one has (two input channels, noise_map)."""
    directory = write_model(root, modality, architecture, default=default)
    data = conditioned_model(gain).SerializeToString()
    (directory / "model.onnx").write_bytes(data)
    card = read_card_file(directory)
    card = card.model_copy(update={
        "sha256": hashlib.sha256(data).hexdigest(),
        "input": TensorSpec(name="noisy", channels=2),
        "noise_map": NOISE_MAPS[modality],
        "non_negative": modality != "ct" if non_negative is None else non_negative,
        "spatial_multiple": 1,
    })
    write_card(directory, card)
    return directory


def read_card_file(directory: Path) -> ModelCard:
    from app.inference.card import read_card

    return read_card(directory)


def write_model_set(root: Path) -> Path:
    """A mean-filter default per modality, plus an identity 'autoencoder' for CT."""
    for modality in ("ct", "mr", "xray"):
        write_model(root, modality, "unet")
    write_model(root, "ct", "autoencoder", kernel=IDENTITY_3X3, default=False)
    return root
