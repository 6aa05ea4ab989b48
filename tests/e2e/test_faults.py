"""Faults in a real uvicorn process, and what the service says about each.

* A model that fails inside ONNX Runtime on some inputs (``tests/faulty_models.py``: a valid
  card, a graph that cannot take values far beyond its window): only the request with such an
  image fails, with 500 ``inference_failed`` naming its request id; other models' requests at the
  same time, the good request that shared its batch, and the next request to the model succeed.
* A model whose checksum does not match its card, an empty models folder, and the CUDA provider
  asked for on an ONNX Runtime without it: the service starts, says why in /readyz, /v1/models,
  /metrics and its log, and serves what it can.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.faulty_models import FAILING_ABOVE, write_faulty_model
from tests.files import png_bytes
from tests.load_client import Case, judge, metric_total, metrics_of, phantom, post_case, same_png, served
from tests.tiny_models import write_model, write_model_set

REPO = Path(__file__).resolve().parents[2]

# A 16-bit CT PNG value of 60000 is 58976 HU: far beyond the faulty model's guard.
POISON = 60000
SHARED_BATCH_LOG = "running each alone"  # the batcher's line when a shared batch failed


def ct_case(seed: int, poisoned: bool = False) -> Case:
    image = phantom((64, 64), 3000, np.uint16, seed)
    if poisoned:
        image[10, 20] = POISON
    return Case("ct", {"file": ("ct.png", png_bytes(image))}, same_png(image), {"modality": "ct"})


def png_case(modality: str, seed: int, shape: tuple[int, int] = (72, 56)) -> Case:
    image = phantom(shape, 2000, np.uint16, seed)
    return Case(modality, {"file": ("x.png", png_bytes(image))}, same_png(image), {"modality": modality})


def post_with_id(client: httpx.Client, case: Case, request_id: str) -> httpx.Response:
    headers = {**case.headers, "x-request-id": request_id}
    return client.post("/v1/denoise", files=case.files, data=case.fields, headers=headers)


def assert_inference_failed(response: httpx.Response, request_id: str) -> None:
    assert response.status_code == 500, response.text
    body = response.json()
    assert body["error"] == "inference_failed", body
    assert "ct-unet" in body["detail"] and request_id in body["detail"], body["detail"]
    assert response.headers["x-request-id"] == request_id


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Path]]:
    root = tmp_path_factory.mktemp("models")
    write_faulty_model(root, "ct", "unet")
    # The committed MR U-Net: its calls are slow enough to hold the one execution slot while
    # CT requests queue behind it.
    shutil.copytree(REPO / "models" / "mr" / "unet", root / "mr" / "unet")
    write_model(root, "xray", "unet")
    log = tmp_path_factory.mktemp("uvicorn") / "server.log"
    with served(root, log) as (client, _):
        yield client, log


def test_a_model_failing_on_an_image_fails_that_request_only(faulty: tuple[httpx.Client, Path]) -> None:
    client, log = faulty
    others = [png_case("mr", 1), png_case("xray", 2)]
    with ThreadPoolExecutor(3) as pool:
        failing = pool.submit(post_with_id, client, ct_case(3, poisoned=True), "fault-1")
        served_meanwhile = [pool.submit(post_case, client, case) for case in others]
        assert_inference_failed(failing.result(60), "fault-1")
        for case, answer in zip(others, served_meanwhile, strict=True):
            assert judge(case, answer.result(60)) is None
    good = ct_case(4)
    assert judge(good, post_case(client, good)) is None  # the model serves its next request

    counted = metrics_of(client)
    assert metric_total(counted, "denoise_failures_total", reason="inference_failed") >= 1
    assert metric_total(counted, "denoise_requests_total", model="ct-unet", status="500") >= 1
    text = log.read_text()
    assert "[fault-1] request failed: inference_failed (500)" in text
    # Type names only: neither ONNX Runtime's exception text nor a traceback reaches the log.
    assert "[ONNXRuntimeError]" not in text and "Traceback" not in text


def test_a_model_failing_on_an_oip_tensor_answers_in_the_protocols_error_shape(
    faulty: tuple[httpx.Client, Path],
) -> None:
    client, _ = faulty
    tensor = {"name": "noisy", "shape": [1, 1, 16, 16], "datatype": "FP32", "data": [FAILING_ABOVE * 2] * 256}
    request = {"inputs": [tensor]}
    answer = client.post("/v2/models/ct-unet/infer", json=request, headers={"X-Request-Id": "oip-fault-1"})
    assert answer.status_code == 500 and answer.headers["x-request-id"] == "oip-fault-1"
    assert list(answer.json()) == ["error"] and "request id" in answer.json()["error"]
    tensor["data"] = [0.5] * 256
    assert client.post("/v2/models/ct-unet/infer", json={"inputs": [tensor]}).status_code == 200


def test_a_bad_image_does_not_fail_the_good_one_that_shared_its_batch(
    faulty: tuple[httpx.Client, Path],
) -> None:
    client, log = faulty
    # 512 x 512: the MR call (~0.1 s here) outlasts the 50 ms wait below; a 256 x 256 one could
    # end first on a fast minute, and then the CT requests found the slot free and ran alone.
    blocker = png_case("mr", 5, shape=(512, 512))
    shared_before = log.read_text().count(SHARED_BATCH_LOG)
    for attempt in range(5):  # they share a batch (the log says so) unless the timing is off
        with ThreadPoolExecutor(3) as pool:
            # While an MR call holds the execution slot, both CT requests queue for the CT
            # model, and its next batch takes them together.
            slow = pool.submit(post_case, client, blocker)
            while metric_total(metrics_of(client), "denoise_in_flight") < 1:
                time.sleep(0.01)
            time.sleep(0.05)  # past decoding: the MR call has started
            good = ct_case(10 + attempt)
            bad_answer = pool.submit(
                post_with_id, client, ct_case(20 + attempt, poisoned=True), f"bad-{attempt}"
            )
            good_answer = pool.submit(post_with_id, client, good, f"good-{attempt}")
            assert_inference_failed(bad_answer.result(60), f"bad-{attempt}")
            assert judge(good, good_answer.result(60)) is None
            assert judge(blocker, slow.result(60)) is None
        if log.read_text().count(SHARED_BATCH_LOG) > shared_before:
            print(f"\nthe bad and the good CT request shared a batch on attempt {attempt + 1}")
            break
    assert log.read_text().count(SHARED_BATCH_LOG) > shared_before, "the two never shared a batch"


def test_a_model_whose_checksum_mismatches_is_not_served_and_the_rest_are(tmp_path: Path) -> None:
    root = write_model_set(tmp_path / "models")
    tampered = root / "ct" / "unet" / "model.onnx"
    tampered.write_bytes(tampered.read_bytes() + b"\0")
    log = tmp_path / "server.log"
    with served(root, log) as (client, _):
        ready = client.get("/readyz")
        listed = client.get("/v1/models").json()
        named = {"modality": "ct", "model": "ct-unet"}
        refused = client.post("/v1/denoise", files=ct_case(1).files, data=named)
        mr = png_case("mr", 2)
        mr_answer = post_case(client, mr)

    assert ready.status_code == 200  # other models are loaded
    assert [(u["model_id"], "checksum mismatch" in u["reason"]) for u in ready.json()["unserved"]] == [
        ("ct-unet", True)
    ]
    assert "ct-unet" not in [m["id"] for m in listed["models"]]
    assert [u["model_id"] for u in listed["unserved"]] == ["ct-unet"]
    assert "checksum mismatch" in listed["unserved"][0]["reason"]
    assert refused.status_code == 503 and refused.json()["error"] == "model_unavailable"
    assert "checksum mismatch" in refused.json()["detail"]
    assert judge(mr, mr_answer) is None
    assert "model ct/unet not served: checksum mismatch" in log.read_text()


def test_an_empty_models_folder_starts_the_service_not_ready_with_the_reason(tmp_path: Path) -> None:
    empty = tmp_path / "models"
    empty.mkdir()
    log = tmp_path / "server.log"
    with served(empty, log) as (client, _):
        alive = client.get("/healthz").status_code
        ready = client.get("/readyz")
        denoise = post_case(client, png_case("mr", 1))

    assert alive == 200
    assert ready.status_code == 503 and ready.json()["error"] == "not_ready"
    assert f"no model found under {empty.resolve()}" in ready.json()["detail"]
    assert denoise.status_code == 503 and denoise.json()["error"] == "model_unavailable"
    assert "serving 0 model(s), 0 not served" in log.read_text()
    assert any("WARNING" in line and "no model is served" in line for line in log.read_text().splitlines())


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(),
    reason="this onnxruntime build has CUDA, so asking for it cannot fall back to the CPU",
)
def test_cuda_asked_for_without_a_gpu_runtime_serves_on_the_cpu_and_says_so(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with served(write_model_set(tmp_path / "models"), log, providers="cuda") as (client, _):
        listed = client.get("/v1/models").json()
        counted = metrics_of(client)
        mr = png_case("mr", 1)
        answer = post_case(client, mr)

    assert listed["requested_providers"] == ["CPUExecutionProvider"]
    assert {m["execution_provider"] for m in listed["models"]} == {"CPUExecutionProvider"}
    cpu = metric_total(counted, "denoise_model_execution_provider_info", provider="CPUExecutionProvider")
    assert cpu == len(listed["models"]) == metric_total(counted, "denoise_model_execution_provider_info")
    assert judge(mr, answer) is None and answer.headers["x-execution-provider"] == "CPUExecutionProvider"
    text = log.read_text()
    assert "!!! GPU execution provider CUDAExecutionProvider was requested" in text
    assert "falling back to CPU" in text
