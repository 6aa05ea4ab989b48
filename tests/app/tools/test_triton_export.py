"""The Triton export: a repository Triton would load, checked with Triton's own ModelConfig proto."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from google.protobuf import text_format

from app.inference.card import ModelCard, read_card
from app.settings import Settings
from app.tools.triton_export import main, preferred_batch_sizes, warmup_shapes
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
        # --max-batch-size, the option's old name, still sets the largest batch.
        assert list(config.dynamic_batching.preferred_batch_size) == [1, 2, 4, 8]
        assert config.instance_group[0].kind == model_config.ModelInstanceGroup.KIND_GPU
        assert list(config.version_policy.specific.versions) == [1]
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
        assert accelerator.name == "tensorrt"
        parameters = {key: value.string_value for key, value in config.parameters.items()}
        assert parameters["card_version"] == card.version
        assert parameters["spatial_multiple"] == str(card.spatial_multiple)
        assert json.loads(parameters["normalisation"])["kind"] == card.normalisation.kind


def parse_config(path: Path, model_config: ModuleType) -> Any:
    return text_format.Parse(path.read_text(), model_config.ModelConfig())


# Each combination the export offers, and what it must write.
VARIANTS = {
    "default": ([], {"kind": "KIND_GPU", "count": 1, "precision": None}),
    "tensorrt": (["--tensorrt"], {"kind": "KIND_GPU", "count": 1, "precision": "FP32"}),
    "cpu": (["--cpu", "--instances", "3"], {"kind": "KIND_CPU", "count": 3, "precision": None}),
    "fp16": (
        ["--tensorrt", "--fp16", "--trt-cache", "/engines"],
        {"kind": "KIND_GPU", "count": 1, "precision": "FP16", "cache": "/engines"},
    ),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_serving_options_parse_as_triton_model_config(
    tmp_path: Path, model_config: ModuleType, variant: str
) -> None:
    args, expected = VARIANTS[variant]
    models = write_model_set(tmp_path / "models")
    write_conditioned_model(models, "mr", "unet-conditioned", default=False)
    out = tmp_path / "triton"
    assert main(["--models-dir", str(models), "--out", str(out), *args]) == 0
    service = Settings.model_fields
    batch = service["batch_max_size"].default
    channels: set[int] = set()
    for card_dir in sorted(p.parent for p in models.rglob("card.json")):
        card = read_card(card_dir)
        config = parse_config(out / card.id / "config.pbtxt", model_config)

        # The service's micro-batches, and no larger batch than it sends.
        assert config.max_batch_size == batch == 4
        assert list(config.dynamic_batching.preferred_batch_size) == [1, 2, 4]
        assert config.dynamic_batching.max_queue_delay_microseconds == 2000

        (group,) = config.instance_group
        assert group.kind == model_config.ModelInstanceGroup.Kind.Value(expected["kind"])
        assert group.count == expected["count"]

        accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
        if expected["precision"] is None:
            assert not config.HasField("optimization")
        else:
            (accelerator,) = accelerators
            assert accelerator.name == "tensorrt"
            assert dict(accelerator.parameters) == {
                "precision_mode": expected["precision"],
                "max_workspace_size_bytes": str(1 << 30),
                "trt_engine_cache_enable": "true",
                "trt_engine_cache_path": expected.get("cache", "/cache/trt"),
            }

        # One zero-filled warm-up per preferred batch size and tile bucket a front end sends.
        tile = service["tile_size"].default
        buckets = [(256, 256), (256, 512), (512, 256), (512, 512)]
        assert warmup_shapes(card, tile) == buckets  # the tiny models need no larger tile
        assert [w.batch_size for w in config.model_warmup] == [1, 2, 4] * 4
        seen = set()
        for warmup in config.model_warmup:
            (name,) = warmup.inputs
            sample = warmup.inputs[name]
            assert name == card.input.name
            assert sample.dims[0] == card.input.channels
            seen.add(tuple(sample.dims)[1:])
            assert sample.data_type == model_config.TYPE_FP32 and sample.zero_data
        assert sorted(seen) == buckets
        channels.add(card.input.channels)
    assert channels == {1, 2}  # a conditioned model warms up with its noise-map channel too


def test_conditioned_model_warms_up_with_its_noise_map_channel(
    tmp_path: Path, model_config: ModuleType
) -> None:
    models = write_model_set(tmp_path / "models")
    write_conditioned_model(models, "mr", "unet-conditioned", default=False)
    out = tmp_path / "triton"
    assert main(["--models-dir", str(models), "--out", str(out), "--warmup-size", "256"]) == 0
    config = parse_config(out / "mr-unet-conditioned" / "config.pbtxt", model_config)
    assert [list(w.inputs["noisy"].dims) for w in config.model_warmup] == (
        [[2, 128, 128]] * 3 + [[2, 128, 256]] * 3 + [[2, 256, 128]] * 3 + [[2, 256, 256]] * 3)


def test_preferred_sizes_follow_the_largest_batch(tmp_path: Path, model_config: ModuleType) -> None:
    assert preferred_batch_sizes(1) == [1]
    assert preferred_batch_sizes(4) == [1, 2, 4]
    assert preferred_batch_sizes(6) == [1, 2, 4, 6]
    assert preferred_batch_sizes(16) == [1, 2, 4, 8, 16]
    models = write_model_set(tmp_path / "models")
    out = tmp_path / "triton"
    args = ["--max-batch", "6", "--queue-delay-us", "0"]
    assert main(["--models-dir", str(models), "--out", str(out), *args]) == 0
    config = parse_config(out / "ct-unet" / "config.pbtxt", model_config)
    assert config.max_batch_size == 6
    assert list(config.dynamic_batching.preferred_batch_size) == [1, 2, 4, 6]
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    assert [w.batch_size for w in config.model_warmup] == [1, 2, 4, 6] * 4


def test_the_warm_up_tiles_grow_as_the_service_plan_does(tmp_path: Path) -> None:
    models = write_model_set(tmp_path / "models")
    card: ModelCard = read_card(models / "ct" / "unet")
    # Margins of 200 pixels on each side do not fit a 512 tile: the service runs 864 (a multiple
    # of the 16-pixel grid, twice the 432-pixel overlap); the small bucket stays 256.
    wide = card.model_copy(update={"receptive_field": 400})
    assert warmup_shapes(wide, 512)[-1] == (864, 864) and warmup_shapes(wide, 512)[0] == (256, 256)
    # A tile size off the pooling grid is rounded up to it, as the service does.
    assert warmup_shapes(card, 500) == [(256, 256), (256, 512), (512, 256), (512, 512)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cpu", "--tensorrt"], "--tensorrt needs GPU instances"),
        (["--fp16"], "--fp16 applies to TensorRT engines"),
        (["--tensorrt", "--trt-cache", "cache/trt"], "--trt-cache must be an absolute path"),
        (["--warmup-size", "32"], "--warmup-size must be between 64 and 8192"),
        (["--max-batch", "0"], "--max-batch and --instances must be >= 1"),
    ],
)
def test_combinations_triton_would_not_honour_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "triton"), *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "triton").exists()


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
