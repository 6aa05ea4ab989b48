"""The Triton export: a repository Triton would load, checked with Triton's own ModelConfig proto."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import text_format

from app.inference.card import read_card
from app.tools.triton_export import main
from tests.tiny_models import write_conditioned_model, write_model_set


def triton_model_config() -> ModuleType:
    """tritonclient ships Triton's model_config.proto compiled; load it without the gRPC client."""
    spec = importlib.util.find_spec("tritonclient")
    assert spec is not None and spec.submodule_search_locations
    path = Path(spec.submodule_search_locations[0]) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_config() -> ModuleType:
    return triton_model_config()


def test_every_model_exported_byte_for_byte_with_a_valid_config(
    tmp_path: Path, model_config: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    models = write_model_set(tmp_path / "models")
    write_conditioned_model(models, "mr", "unet-conditioned", default=False)
    out = tmp_path / "triton"
    assert main(["--models-dir", str(models), "--out", str(out), "--max-batch-size", "8", "--tensorrt"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "ct-autoencoder", "ct-unet", "mr-unet", "mr-unet-conditioned", "xray-unet"]
    assert len(capsys.readouterr().out.splitlines()) == 5
    for card_dir in sorted(p.parent for p in models.rglob("card.json")):
        card = read_card(card_dir)
        target = out / card.id
        onnx = (target / "1" / "model.onnx").read_bytes()
        assert hashlib.sha256(onnx).hexdigest() == card.sha256
        assert json.loads((target / "card.json").read_text())["id"] == card.id

        config = text_format.Parse((target / "config.pbtxt").read_text(), model_config.ModelConfig())
        assert config.name == card.id and config.platform == "onnxruntime_onnx"
        assert config.backend == "onnxruntime" and config.max_batch_size == 8
        (tensor_in,) = config.input
        (tensor_out,) = config.output
        assert (tensor_in.name, tensor_out.name) == ("noisy", "denoised")
        # A model conditioned on the noise level takes the image and its noise map.
        assert list(tensor_in.dims) == [card.input.channels, -1, -1] and list(tensor_out.dims) == [1, -1, -1]
        assert tensor_in.data_type == tensor_out.data_type == model_config.TYPE_FP32
        assert config.dynamic_batching.max_queue_delay_microseconds == 2000
        assert config.instance_group[0].kind == model_config.ModelInstanceGroup.KIND_GPU
        assert list(config.version_policy.specific.versions) == [1]
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
        assert accelerator.name == "tensorrt"
        parameters = {key: value.string_value for key, value in config.parameters.items()}
        assert parameters["card_version"] == card.version
        assert parameters["spatial_multiple"] == str(card.spatial_multiple)
        assert json.loads(parameters["normalisation"])["kind"] == card.normalisation.kind


def test_cpu_instances_and_a_second_export_replaces_the_first(
    tmp_path: Path, model_config: ModuleType
) -> None:
    models = write_model_set(tmp_path / "models")
    out = tmp_path / "triton"
    assert main(["--models-dir", str(models), "--out", str(out)]) == 0
    (out / "ct-unet" / "1" / "stale.onnx").write_bytes(b"old")
    assert (
        main(["--models-dir", str(models), "--out", str(out), "--instance-kind", "cpu", "--instances", "2"])
        == 0
    )
    assert not (out / "ct-unet" / "1" / "stale.onnx").exists()
    config = text_format.Parse((out / "ct-unet" / "config.pbtxt").read_text(), model_config.ModelConfig())
    assert config.instance_group[0].kind == model_config.ModelInstanceGroup.KIND_CPU
    assert config.instance_group[0].count == 2 and not config.HasField("optimization")


def test_a_model_that_fails_its_checksum_is_not_exported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = write_model_set(tmp_path / "models")
    with (models / "mr" / "unet" / "model.onnx").open("ab") as onnx:
        onnx.write(b"\0")
    assert main(["--models-dir", str(models), "--out", str(tmp_path / "triton")]) == 1
    assert "sha256" in capsys.readouterr().err


def test_no_models_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--models-dir", str(tmp_path), "--out", str(tmp_path / "triton")]) == 1
    assert "no card.json" in capsys.readouterr().err
