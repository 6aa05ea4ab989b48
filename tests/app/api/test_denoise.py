"""POST /v1/denoise through the test client: formats, units and bit depth end to end."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.pixels import apply_modality_lut

from app.main import create_app
from app.settings import Settings
from tests.files import dicom_file, png_bytes, read_png
from tests.tiny_models import write_model


def post(client: TestClient, data: bytes, headers: dict[str, str] | None = None, **fields: str):  # type: ignore[no-untyped-def]
    files = {"file": ("image", data, "application/octet-stream")}
    if "reference" in fields:
        files["reference"] = ("reference", fields.pop("reference"), "application/octet-stream")  # type: ignore[assignment]
    return client.post("/v1/denoise", files=files, data=fields, headers=headers or {})


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_comes_back_as_png_of_the_same_bit_depth_and_size(client: TestClient, dtype: type) -> None:
    rng = np.random.default_rng(9)
    pixels = rng.integers(0, np.iinfo(dtype).max // 2, (301, 259)).astype(dtype)
    response = post(client, png_bytes(pixels), modality="mr")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    out = read_png(response.content)
    assert out.dtype == dtype and out.shape == pixels.shape
    assert not np.array_equal(out, pixels)  # the mean filter did something
    assert response.headers["x-model-id"] == "mr-unet"
    assert response.headers["x-request-id"]
    metrics = json.loads(response.headers["x-denoise-metrics"])
    noref = metrics["noref"]
    assert noref["noise_sigma_wavelet_mad"]["output"] < noref["noise_sigma_wavelet_mad"]["input"]
    assert noref["noise_reduction_db"]["immerkaer"] > 0


def test_identity_model_gives_back_every_ct_value(client: TestClient) -> None:
    """HU + 1024 in, through the fixed window and its inverse, HU + 1024 out: nothing lost."""
    pixels = np.random.default_rng(10).integers(0, 65535, (140, 130)).astype(np.uint16)
    response = post(client, png_bytes(pixels), modality="ct", model="autoencoder")
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(read_png(response.content), pixels)


def test_dicom_ct_keeps_hounsfield_units_and_bit_depth(client: TestClient) -> None:
    data = dicom_file("CT_small.dcm")
    response = post(client, data, model="ct-autoencoder")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    source, derived = pydicom.dcmread(io.BytesIO(data)), pydicom.dcmread(io.BytesIO(response.content))
    assert (derived.BitsAllocated, derived.BitsStored, derived.PixelRepresentation) == (
        source.BitsAllocated,
        source.BitsStored,
        source.PixelRepresentation,
    )
    np.testing.assert_array_equal(
        apply_modality_lut(derived.pixel_array, derived), apply_modality_lut(source.pixel_array, source)
    )
    assert derived.SOPInstanceUID != source.SOPInstanceUID
    assert "ct-autoencoder" in derived.DerivationDescription


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("MR_small.dcm", "mr-unet"),
        ("emri_small_jpeg_2k_lossless.dcm", "mr-unet"),
        ("RG1_UNCR.dcm", "xray-unet"),
    ],
)
def test_dicom_modality_comes_from_the_tag(client: TestClient, name: str, model: str) -> None:
    data = dicom_file(name)
    response = post(client, data, metrics="none")
    assert response.status_code == 200, response.text
    assert response.headers["x-model-id"] == model
    source, derived = pydicom.dcmread(io.BytesIO(data)), pydicom.dcmread(io.BytesIO(response.content))
    assert derived.pixel_array.shape == source.pixel_array.shape
    assert derived.pixel_array.dtype == source.pixel_array.dtype
    assert derived.PhotometricInterpretation == source.PhotometricInterpretation
    assert json.loads(response.headers["x-denoise-metrics"]) == {}


def denoise_ramp(
    client: TestClient, modality: str, low: float, high: float, sigma: float
) -> tuple[np.ndarray, np.ndarray, dict, str]:  # type: ignore[type-arg]
    """A noisy 16-bit ramp with its clean reference, answered as JSON with all metrics."""
    clean = np.tile(np.linspace(low, high, 96), (80, 1)).astype(np.uint16)
    noisy = (clean + np.random.default_rng(11).normal(0, sigma, clean.shape)).astype(np.uint16)
    response = post(
        client,
        png_bytes(noisy),
        headers={"accept": "application/json"},
        modality=modality,
        metrics="all",
        reference=png_bytes(clean),
    )
    assert response.status_code == 200, response.text
    return clean, noisy, response.json(), response.headers["x-request-id"]


def test_json_answer_carries_image_metrics_and_timings(client: TestClient) -> None:
    clean, _, body, request_id = denoise_ramp(client, "ct", 1000, 3000, sigma=40)
    assert body["media_type"] == "image/png" and body["model"] == "ct-unet" and body["modality"] == "ct"
    assert read_png(base64.b64decode(body["image_base64"])).shape == clean.shape
    assert body["execution_provider"] == "CPUExecutionProvider"
    assert body["request_id"] == request_id
    assert {"decode", "queue", "preprocess", "infer", "postprocess", "metrics", "encode"} <= set(
        body["timings_ms"]
    )
    ref = body["metrics"]["reference"]
    assert ref["data_range"] == 4095 and ref["units"] == "HU"
    assert ref["output"]["psnr_db"] > ref["input"]["psnr_db"]


def test_reference_metrics_agree_with_scikit_image(client: TestClient) -> None:
    skm = pytest.importorskip("skimage.metrics")
    clean, noisy, body, _ = denoise_ramp(client, "mr", 200, 900, sigma=30)
    out = read_png(base64.b64decode(body["image_base64"])).astype(np.float64)
    ref = body["metrics"]["reference"]
    data_range = float(clean.max() - clean.min())  # MR: the reference's own spread
    assert ref["data_range"] == data_range
    # The service measures before re-quantising to 16 bits; allow for that rounding.
    assert ref["output"]["psnr_db"] == pytest.approx(
        skm.peak_signal_noise_ratio(clean.astype(float), out, data_range=data_range), abs=0.05
    )
    assert ref["output"]["ssim"] == pytest.approx(
        skm.structural_similarity(clean.astype(float), out, data_range=data_range), abs=2e-3
    )
    assert ref["input"]["psnr_db"] == pytest.approx(
        skm.peak_signal_noise_ratio(clean.astype(float), noisy.astype(float), data_range=data_range), abs=1e-9
    )


def test_client_request_id_is_echoed(client: TestClient) -> None:
    response = post(
        client, png_bytes(np.zeros((16, 16), np.uint8)), headers={"x-request-id": "abc-123"}, modality="xray"
    )
    assert response.headers["x-request-id"] == "abc-123"


@pytest.mark.parametrize("shape", [(1, 1), (3, 200), (6, 6)])
def test_tiny_images_are_denoised_and_their_metrics_skipped(
    client: TestClient, shape: tuple[int, int]
) -> None:
    pixels = np.full(shape, 1100, np.uint16)
    response = post(client, png_bytes(pixels), modality="ct", metrics="all", reference=png_bytes(pixels))
    assert response.status_code == 200, response.text
    assert read_png(response.content).shape == shape
    assert "skipped" in json.loads(response.headers["x-denoise-metrics"])["noref"]


def test_dicom_of_a_modality_without_a_model_is_422_naming_what_is_served(tmp_path: Path) -> None:
    write_model(tmp_path, "ct", "unet")
    with TestClient(create_app(Settings(models_dir=tmp_path, intra_op_threads=1))) as ct_only:
        response = post(ct_only, dicom_file("MR_small.dcm"))
        assert response.status_code == 422 and response.json()["error"] == "modality_not_served"
        assert "ct (DICOM Modality CT)" in response.json()["detail"]
        nuclear = post(ct_only, dicom_file("JPEG2000_UNC.dcm"))  # NM: no model family at all
        assert nuclear.status_code == 422 and nuclear.json()["error"] == "unknown_modality"
        assert "'NM'" in nuclear.json()["detail"] and "ct (DICOM Modality CT)" in nuclear.json()["detail"]


def test_colour_dicom_is_415_saying_what_is_supported(client: TestClient) -> None:
    response = post(client, dicom_file("US1_UNCR.dcm"), modality="xray")
    assert response.status_code == 415 and response.json()["error"] == "unsupported_image"
    assert "MONOCHROME1 or MONOCHROME2" in response.json()["detail"]


def test_dicom_retries_write_the_same_instance_and_slices_share_a_series(client: TestClient) -> None:
    first = pydicom.dcmread(io.BytesIO(post(client, dicom_file("CT_small.dcm"), metrics="none").content))
    again = pydicom.dcmread(io.BytesIO(post(client, dicom_file("CT_small.dcm"), metrics="none").content))
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (again.SOPInstanceUID, again.SeriesInstanceUID)
    other = pydicom.dcmread(
        io.BytesIO(post(client, dicom_file("CT_small.dcm"), model="ct-autoencoder", metrics="none").content)
    )
    assert other.SeriesInstanceUID != first.SeriesInstanceUID
    assert "ct-unet" in first.DerivationDescription and "ct-autoencoder" in other.SeriesDescription
