"""A tiny model that fails inside ONNX Runtime on some inputs only: a real fault in a real process.

The graph is the tiny mean filter of ``tests/tiny_models.py`` behind a guard that reshapes the
input to its own shape, plus one column when any value of the batch exceeds ``limit`` (in model
units). Normal images pass the guard unchanged; an image with a value beyond the limit makes the
Reshape fail at run time, as a real graph fails on an input it cannot take. The card is valid
(checksum included), so the service loads and serves it like any other model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from app.inference.card import read_card, write_card
from tests.tiny_models import MEAN_3X3, conv_model, write_model

# Model units: CT's fixed window -1024..3071 HU is 0..1, so 8 means about 31700 HU, a value no
# scanner writes (a 16-bit CT PNG holding 60000, for instance).
FAILING_ABOVE = 8.0


def guarded_mean_filter(limit: float = FAILING_ABOVE) -> onnx.ModelProto:
    """The tiny mean filter, failing at run time for a batch with any value above ``limit``."""
    model = conv_model(MEAN_3X3)
    graph = model.graph
    graph.node[0].input[0] = "checked"  # the filter now reads the guard's output
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(limit, np.float32), "limit"),
            numpy_helper.from_array(np.array([0, 0, 0, 1], np.int64), "one_more_column"),
        ]
    )
    guard = [
        helper.make_node("ReduceMax", ["noisy"], ["largest"], keepdims=0),
        helper.make_node("Greater", ["largest", "limit"], ["too_large"]),
        helper.make_node("Cast", ["too_large"], ["flag"], to=TensorProto.INT64),
        helper.make_node("Shape", ["noisy"], ["shape"]),
        helper.make_node("Mul", ["flag", "one_more_column"], ["bump"]),
        helper.make_node("Add", ["shape", "bump"], ["target"]),
        helper.make_node("Reshape", ["noisy", "target"], ["checked"]),
    ]
    for index, node in enumerate(guard):
        graph.node.insert(index, node)
    onnx.checker.check_model(model)
    return model


def write_faulty_model(root: Path, modality: str = "ct", architecture: str = "unet") -> Path:
    """``<root>/<modality>/<architecture>`` with the guarded model and a card that matches it."""
    directory = write_model(root, modality, architecture)
    data = guarded_mean_filter().SerializeToString()
    (directory / "model.onnx").write_bytes(data)
    card = read_card(directory)
    write_card(directory, card.model_copy(update={"sha256": hashlib.sha256(data).hexdigest()}))
    return directory
