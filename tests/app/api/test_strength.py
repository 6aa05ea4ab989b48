"""Models conditioned on the noise level: the map is estimated, `strength` scales it, and the
level applied comes back in the headers, the metrics, the JSON body and the DICOM header."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.app.fuzz.bounds import assert_error
from tests.files import dicom_file, png_bytes, read_png
from tests.tiny_models import write_conditioned_model, write_model


@pytest.fixture(scope="module")
def conditioned_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("conditioned")
    for modality in ("ct", "mr", "xray"):
        write_conditioned_model(root, modality)
    write_model(root, "ct", "autoencoder", default=False)  # a blind model beside it
    settings = Settings(models_dir=root, intra_op_threads=1, tile_size=128)
    with TestClient(create_app(settings)) as client:
        yield client


def noisy_ct_png(sigma_hu: float, seed: int = 0, size: int = 96) -> tuple[bytes, np.ndarray]:
    """A soft-tissue phantom (40 HU disc on 0 HU) with white noise; PNG values are HU + 1024."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size]
    clean = np.where((rows - size / 2) ** 2 + (cols - size / 2) ** 2 < (size / 4) ** 2, 40.0, 0.0)
    noisy = clean + rng.normal(0.0, sigma_hu, clean.shape)
    return png_bytes(np.clip(np.round(noisy + 1024), 0, 65535).astype(np.uint16)), clean + 1024


def denoise(client: TestClient, data: bytes, **fields: str) -> tuple[int, dict, bytes]:
    response = client.post("/v1/denoise", files={"file": ("x.png", data)}, data={"modality": "ct", **fields})
    return response.status_code, dict(response.headers), response.content


def test_the_estimated_level_is_reported_and_strength_scales_it(conditioned_client: TestClient) -> None:
    data, _ = noisy_ct_png(25.0)
    status, headers, _ = denoise(conditioned_client, data)
    assert status == 200
    level = json.loads(headers["x-noise-level"])
    assert level["units"] == "HU" and level["strength"] == 1.0
    assert 20.0 < level["estimated"] < 30.0  # white noise of 25 HU
    assert level["applied"] == pytest.approx(level["estimated"])
    metrics = json.loads(headers["x-denoise-metrics"])
    assert metrics["noise_level"] == level
    status, headers, _ = denoise(conditioned_client, data, strength="2")
    doubled = json.loads(headers["x-noise-level"])
    assert doubled["strength"] == 2.0 and doubled["applied"] == pytest.approx(2 * doubled["estimated"], rel=1e-3)


def test_more_strength_leaves_less_noise(conditioned_client: TestClient) -> None:
    data, clean = noisy_ct_png(25.0, seed=1)
    residual_noise = []
    for strength in ("0.25", "1", "2", "4"):
        status, _, content = denoise(conditioned_client, data, strength=strength)
        assert status == 200
        residual_noise.append(float(np.std(read_png(content).astype(np.float64) - clean)))
    assert residual_noise == sorted(residual_noise, reverse=True)
    assert residual_noise[0] > 1.2 * residual_noise[-1]


@pytest.mark.parametrize("strength", ["0.2", "4.5", "-1", "nan", "inf", "1e999"])
def test_strength_outside_its_range_is_422(conditioned_client: TestClient, strength: str) -> None:
    data, _ = noisy_ct_png(10.0)
    response = conditioned_client.post(
        "/v1/denoise", files={"file": ("x.png", data)}, data={"modality": "ct", "strength": strength}
    )
    assert_error(response, 422, "strength_out_of_range")
    assert "0.25" in response.json()["detail"] and "and 4" in response.json()["detail"]


def test_a_blind_model_still_refuses_strength(conditioned_client: TestClient) -> None:
    data, _ = noisy_ct_png(10.0)
    response = conditioned_client.post(
        "/v1/denoise", files={"file": ("x.png", data)},
        data={"modality": "ct", "model": "ct-autoencoder", "strength": "1"},
    )
    assert_error(response, 422, "strength_unsupported")
    status, headers, _ = denoise(conditioned_client, data, model="ct-autoencoder")
    assert status == 200 and "x-noise-level" not in headers


def test_models_say_which_accept_strength(conditioned_client: TestClient) -> None:
    models = {m["id"]: m for m in conditioned_client.get("/v1/models").json()["models"]}
    assert models["ct-unet"]["accepts_strength"] is True
    assert models["ct-autoencoder"]["accepts_strength"] is False
    assert models["xray-unet"]["card"]["noise_map"]["estimator"] == "signal_dependent"


def test_json_body_and_dicom_header_carry_the_level(conditioned_client: TestClient) -> None:
    response = conditioned_client.post(
        "/v1/denoise", files={"file": ("ct.dcm", dicom_file("CT_small.dcm"))}, data={"strength": "1.5"},
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["noise_level"]["strength"] == 1.5 and body["noise_level"]["units"] == "HU"
    import base64

    derived = pydicom.dcmread(io.BytesIO(base64.b64decode(body["image_base64"])))
    assert "strength 1.5" in derived.DerivationDescription
    assert "noise level estimated" in derived.DerivationDescription


def test_negative_mr_values_are_clipped_like_a_png_would_be(conditioned_client: TestClient) -> None:
    """A magnitude MR with additive noise sent as signed DICOM and as PNG (negatives clipped on the
    way in) gives the same answer: the model sees non-negative magnitudes either way."""
    rng = np.random.default_rng(3)
    clean = np.zeros((64, 64))
    clean[16:48, 16:48] = 400.0
    noisy = np.round(clean + rng.normal(0.0, 30.0, clean.shape)).astype(np.int16)
    assert (noisy < 0).any()
    ds = pydicom.dcmread(io.BytesIO(dicom_file("MR_small.dcm")))
    ds.PixelData = noisy.tobytes()
    ds.PixelRepresentation = 1
    ds.BitsStored, ds.HighBit = 16, 15
    ds.pop("SmallestImagePixelValue", None)
    ds.pop("LargestImagePixelValue", None)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    from_dicom = conditioned_client.post("/v1/denoise", files={"file": ("mr.dcm", buffer.getvalue())})
    from_png = conditioned_client.post(
        "/v1/denoise", files={"file": ("mr.png", png_bytes(np.clip(noisy, 0, None).astype(np.uint16)))},
        data={"modality": "mr"},
    )
    assert from_dicom.status_code == 200 and from_png.status_code == 200
    dicom_pixels = pydicom.dcmread(io.BytesIO(from_dicom.content)).pixel_array.astype(np.int32)
    png_pixels = read_png(from_png.content).astype(np.int32)
    assert dicom_pixels.min() >= 0
    assert np.abs(dicom_pixels - png_pixels).max() <= 1

