"""The Open Inference Protocol: Triton's own client against a real uvicorn, and the protocol's
edge cases (JSON tensors, binary tensor data, compression, errors) through the ASGI app.

The tiny models are a 3 x 3 mean filter after reflect padding (``*-unet``) and the identity
(``ct-autoencoder``), so every output is known exactly.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from fastapi.testclient import TestClient
from tritonclient.utils import InferenceServerException

from app.errors import ServiceBusy
from tests.uvicorn_server import uvicorn_server


def mean_3x3(batch: np.ndarray) -> np.ndarray:
    padded = np.pad(batch, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    rows, cols = batch.shape[2:]
    windows = [padded[:, :, r : r + rows, c : c + cols] for r in range(3) for c in range(3)]
    return np.mean(windows, axis=0)


def noisy_batch(n: int = 2, rows: int = 40, cols: int = 24) -> np.ndarray:
    return np.random.default_rng(5).uniform(0, 1, (n, 1, rows, cols)).astype(np.float32)


@pytest.fixture(scope="module")
def triton_client(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[triton.InferenceServerClient]:
    log = tmp_path_factory.mktemp("oip") / "server.log"
    with uvicorn_server(models_dir, log) as base_url:
        client = triton.InferenceServerClient(url=base_url.removeprefix("http://"), network_timeout=60)
        try:
            yield client
        finally:
            client.close()


def test_tritonclient_health_and_metadata(triton_client: triton.InferenceServerClient) -> None:
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.is_model_ready("ct-unet") and not triton_client.is_model_ready("nope")
    server = triton_client.get_server_metadata()
    assert server["name"] == "medical-denoise" and "binary_tensor_data" in server["extensions"]
    meta = triton_client.get_model_metadata("mr-unet")
    assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "noisy", "datatype": "FP32", "shape": [-1, 1, -1, -1]}]
    assert meta["outputs"] == [{"name": "denoised", "datatype": "FP32", "shape": [-1, 1, -1, -1]}]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_tritonclient_infer(
    triton_client: triton.InferenceServerClient, binary: bool, compression: str | None
) -> None:
    batch = noisy_batch()
    tensor = triton.InferInput("noisy", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    result = triton_client.infer(
        "ct-unet",
        [tensor],
        outputs=[triton.InferRequestedOutput("denoised", binary_data=binary)],
        request_id="r-1",
        request_compression_algorithm=compression,
    )
    out = result.as_numpy("denoised")
    assert out.dtype == np.float32 and out.shape == batch.shape
    np.testing.assert_allclose(out, mean_3x3(batch), atol=1e-5)
    assert result.get_response()["id"] == "r-1" and result.get_response()["model_name"] == "ct-unet"


def test_tritonclient_identity_model_with_version(triton_client: triton.InferenceServerClient) -> None:
    batch = noisy_batch(1, 16, 16)
    tensor = triton.InferInput("noisy", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    out = triton_client.infer("ct-autoencoder", [tensor], model_version="1").as_numpy("denoised")
    np.testing.assert_array_equal(out, batch)


def test_tritonclient_errors_carry_the_message(triton_client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("noisy", [1, 1, 20, 20], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 1, 20, 20), np.float32))
    with pytest.raises(InferenceServerException, match="multiples of 8"):
        triton_client.infer("ct-unet", [tensor])
    with pytest.raises(InferenceServerException, match="No model 'nope'"):
        triton_client.infer("nope", [tensor])


def test_json_tensor_with_nested_data_and_metrics(client: TestClient) -> None:
    batch = noisy_batch(1, 8, 16)
    request = {
        "inputs": [{"name": "noisy", "shape": [1, 1, 8, 16], "datatype": "FP32", "data": batch.tolist()}]
    }
    response = client.post("/v2/models/xray-unet/infer", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert "id" not in body and body["model_version"] == "1"
    (output,) = body["outputs"]
    assert output["name"] == "denoised" and output["shape"] == [1, 1, 8, 16]
    np.testing.assert_allclose(np.array(output["data"]).reshape(batch.shape), mean_3x3(batch), atol=1e-5)
    metrics = client.get("/metrics").text
    assert 'denoise_phase_seconds_count{modality="xray",model="xray-unet",phase="infer"}' in metrics
    # Counted with /v1/denoise in the request metrics, under its model; a refusal too.
    assert 'denoise_requests_total{modality="xray",model="xray-unet",status="200"}' in metrics
    assert 'denoise_request_seconds_count{modality="xray",model="xray-unet",status="200"}' in metrics
    client.post("/v2/models/xray-unet/infer", json={"inputs": []})
    assert 'denoise_requests_total{modality="xray",model="xray-unet",status="400"}' in client.get("/metrics").text


def test_binary_output_asked_for_at_request_level(client: TestClient) -> None:
    batch = noisy_batch(1, 8, 8)
    header = json.dumps(
        {
            "inputs": [
                {"name": "noisy", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": batch.ravel().tolist()}
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    response = client.post(
        "/v2/models/ct-autoencoder/infer", content=gzip.compress(header), headers={"content-encoding": "gzip"}
    )
    assert response.status_code == 200 and response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    meta = json.loads(response.content[:length])
    assert meta["outputs"][0]["parameters"] == {"binary_data_size": 8 * 8 * 4}
    np.testing.assert_array_equal(np.frombuffer(response.content[length:], "<f4").reshape(batch.shape), batch)


def _infer_error(client: TestClient, request: object, **headers: str) -> tuple[int, str]:
    content = request if isinstance(request, bytes) else json.dumps(request).encode()
    response = client.post("/v2/models/ct-unet/infer", content=content, headers=headers)
    body = response.json()
    assert set(body) == {"error"}, body  # the protocol's error shape
    return response.status_code, body["error"]


def _input(**changes: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "name": "noisy",
        "shape": [1, 1, 8, 8],
        "datatype": "FP32",
        "data": [0.5] * 64,
    }
    entry.update(changes)
    return {"inputs": [{key: value for key, value in entry.items() if value is not None}]}


@pytest.mark.parametrize(
    ("request_body", "headers", "status", "message"),
    [
        (b"{not json", {}, 400, "not valid JSON"),
        ([1, 2], {}, 400, "JSON object"),
        ({"inputs": []}, {}, 400, "exactly one input"),
        (_input(name="x"), {}, 400, "input is 'noisy'"),
        (_input(datatype="FP16"), {}, 400, "FP32"),
        (_input(shape=[1, 8, 8]), {}, 400, "[N, 1, H, W]"),
        (_input(shape=[1, 3, 8, 8]), {}, 400, "[N, 1, H, W]"),
        (_input(data=[0.5] * 63), {}, 400, "needs 64"),
        (_input(data=["a"] * 64), {}, 400, "must be numbers"),
        (
            _input(data=None, parameters={"binary_data_size": 256}),
            {"inference-header-content-length": "999"},
            400,
            "length",
        ),
        (_input(data=None, parameters={"binary_data_size": 255}), {}, 400, "256 bytes"),
        (_input(data=None), {}, 400, "data"),
        ({**_input(), "outputs": [{"name": "other"}]}, {}, 400, "output is 'denoised'"),
        (_input(shape=[4000, 1, 2048, 2048]), {}, 413, "limit"),
        (b"\x00\x01", {"content-encoding": "gzip"}, 400, "gzip"),
        (b"{}", {"content-encoding": "br"}, 415, "not supported"),
        # Malformed in ways that once answered 500.
        ({**_input(), "parameters": [1, 2]}, {}, 400, "'parameters' of the request must be a JSON object"),
        (_input(parameters="x"), {}, 400, "'parameters' of the input"),
        ({**_input(), "outputs": [{"name": "denoised", "parameters": 7}]}, {}, 400, "'parameters' of an output"),
        (b'{"inputs": [{"data": [' + b"9" * 5000 + b"]}]}", {}, 400, "over 40 digits"),
        (b'{"inputs": [{"shape": [1, 1, ' + b"9" * 5000 + b", 8]}]}", {}, 400, "over 40 digits"),
        (b'{"inputs": [{"data": [NaN]}]}', {}, 400, "NaN or Infinity"),
        (b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}", {}, 400, "more than any tensor needs"),
        (b'{"inputs": [' + b"[]," * 100_000 + b"[]]}", {}, 400, "more than any tensor needs"),
        (b'{"a": ' + b"[" * 50 + b"1" * 30 + b"]" * 50 + b"}", {}, 400, "exactly one input"),
        ({**_input(), "id": {"a": 1}}, {}, 400, "'id' must be a string"),
    ],
)
def test_bad_requests_say_what_to_fix(
    client: TestClient, request_body: object, headers: dict[str, str], status: int, message: str
) -> None:
    got_status, error = _infer_error(client, request_body, **headers)
    assert got_status == status and message in error


def test_binary_tensor_shorter_than_declared(client: TestClient) -> None:
    header = json.dumps(_input(data=None, parameters={"binary_data_size": 256})).encode()
    status, error = _infer_error(
        client, header + b"\x00" * 100, **{"inference-header-content-length": str(len(header))}
    )
    assert status == 400 and "100 bytes" in error


def test_non_finite_input_refused(client: TestClient) -> None:
    header = json.dumps(_input(data=None, parameters={"binary_data_size": 256})).encode()
    data = np.full(64, np.nan, "<f4").tobytes()
    status, error = _infer_error(
        client, header + data, **{"inference-header-content-length": str(len(header))}
    )
    assert status == 400 and "NaN" in error


def test_unknown_model_and_version(client: TestClient) -> None:
    assert client.get("/v2/models/nope").status_code == 404
    assert client.get("/v2/models/ct-unet/versions/2").status_code == 404
    assert client.get("/v2/models/ct-unet/versions/1/ready").json() == {"name": "ct-unet", "ready": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}


def test_a_full_queue_answers_503_with_retry_after(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def busy(model_id: str, batch: np.ndarray, deadline: object = None) -> tuple[np.ndarray, float]:
        raise ServiceBusy("The inference queue for model 'ct-unet' is full.", retry_after_s=3)

    monkeypatch.setattr(client.app.state.pipeline, "infer", busy)
    response = client.post("/v2/models/ct-unet/infer", json=_input())
    assert response.status_code == 503 and response.headers["retry-after"] == "3"
    assert response.json() == {"error": "The inference queue for model 'ct-unet' is full."}


@pytest.mark.parametrize("length", ["\u00b2", "\u0661\u0662", "-1", "1e3"])
def test_header_length_must_be_ascii_digits(client: TestClient, length: str) -> None:
    """'²'.isdigit() is true, and int() refuses it: every odd length is a 400, never a 500."""
    response = client.post(
        "/v2/models/ct-unet/infer",
        content=json.dumps(_input()).encode(),
        headers=[(b"inference-header-content-length", length.encode("utf-8"))],
    )
    assert response.status_code == 400 and "Inference-Header-Content-Length" in response.json()["error"]


def test_json_over_its_own_limit_is_413_with_the_binary_alternative(tmp_path: Path) -> None:
    from app.main import create_app
    from app.settings import Settings
    from tests.tiny_models import write_model_set

    settings = Settings(models_dir=write_model_set(tmp_path), intra_op_threads=1, max_json_bytes=4096)
    with TestClient(create_app(settings)) as small:
        response = small.post("/v2/models/ct-unet/infer", content=json.dumps(_input(data=[0.123456] * 64 * 16,
                                                                                    shape=[1, 1, 32, 32])))
    assert response.status_code == 413 and "binary" in response.json()["error"]


def _binary_request(tensor: np.ndarray, binary_output: bool = True) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "noisy",
                    "datatype": "FP32",
                    "shape": list(tensor.shape),
                    "parameters": {"binary_data_size": tensor.nbytes},
                }
            ],
            "parameters": {"binary_data_output": binary_output},
        }
    ).encode()
    return head + tensor.tobytes(), {"Inference-Header-Content-Length": str(len(head))}


def _binary_output(response) -> np.ndarray:  # type: ignore[no-untyped-def]
    length = int(response.headers["inference-header-content-length"])
    shape = json.loads(response.content[:length])["outputs"][0]["shape"]
    return np.frombuffer(response.content[length:], dtype="<f4").reshape(shape)


def test_a_tensor_larger_than_a_tile_runs_tiled_with_the_same_result(tmp_path: Path) -> None:
    from app.main import create_app
    from app.settings import Settings
    from tests.tiny_models import write_model_set

    settings = Settings(models_dir=write_model_set(tmp_path), intra_op_threads=1, tile_size=64, tile_overlap=8)
    tensor = noisy_batch(2, 200, 160)
    body, headers = _binary_request(tensor)
    with TestClient(create_app(settings)) as small:
        response = small.post("/v2/models/mr-unet/infer", content=body, headers=headers)
    assert response.status_code == 200
    np.testing.assert_allclose(_binary_output(response), mean_3x3(tensor), atol=1e-6)


def test_json_output_for_a_large_tensor_is_413_with_the_binary_alternative(tmp_path: Path) -> None:
    from app.main import create_app
    from app.settings import Settings
    from tests.tiny_models import write_model_set

    settings = Settings(models_dir=write_model_set(tmp_path), intra_op_threads=1, max_json_bytes=4096)
    tensor = noisy_batch(1, 32, 32)  # 1024 values: 16 KiB of JSON
    with TestClient(create_app(settings)) as small:
        refused = small.post("/v2/models/mr-unet/infer", content=_binary_request(tensor, False)[0],
                             headers=_binary_request(tensor, False)[1])
        binary = small.post("/v2/models/mr-unet/infer", content=_binary_request(tensor)[0],
                            headers=_binary_request(tensor)[1])
    assert refused.status_code == 413 and "binary_data" in refused.json()["error"]
    assert binary.status_code == 200


def test_a_tensor_over_the_deadline_is_504_in_the_protocol_shape(tmp_path: Path) -> None:
    from app.main import create_app
    from app.settings import Settings
    from tests.tiny_models import write_model_set

    settings = Settings(models_dir=write_model_set(tmp_path), intra_op_threads=1, request_timeout_s=1e-9)
    body, headers = _binary_request(noisy_batch(1, 32, 32))
    with TestClient(create_app(settings)) as small:
        response = small.post("/v2/models/mr-unet/infer", content=body, headers=headers)
    assert response.status_code == 504 and "DENOISE_REQUEST_TIMEOUT_S" in response.json()["error"]
