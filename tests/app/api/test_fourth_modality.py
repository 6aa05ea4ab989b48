"""A fourth modality is one profile: registered with a tiny model, it is served end to end
through PNG and DICOM, listed in the API's schema, and training finds its noise model."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from app import modality
from app.inference.normalisation import NormalisationSpec
from app.main import create_app
from app.modality import ModalityProfile
from app.settings import Settings
from tests.files import dicom_file, png_bytes, read_png
from tests.tiny_models import write_model

NUCLEAR = ModalityProfile(
    name="nm", title="Nuclear medicine", dicom_codes=("NM",), units="counts", noise_model="poisson_gaussian",
    gaussian_units="sigma in percent of the 0.5-99.5 percentile range",
)


@pytest.fixture(scope="module")
def nm_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    modality.register(NUCLEAR)
    try:
        models = tmp_path_factory.mktemp("models")
        write_model(models, "ct", "unet")
        write_model(models, "nm", "unet", normalisation=NormalisationSpec(kind="image_percentile", high_percentile=99.5))
        with TestClient(create_app(Settings(models_dir=models, intra_op_threads=1))) as client:
            yield client
    finally:
        modality.unregister("nm")


def post(client: TestClient, data: bytes, **fields: str):  # type: ignore[no-untyped-def]
    return client.post("/v1/denoise", files={"file": ("image", data, "application/octet-stream")}, data=fields)


def test_a_png_of_the_fourth_modality_is_denoised_by_its_model(nm_client: TestClient) -> None:
    pixels = np.random.default_rng(4).integers(0, 4000, (96, 80)).astype(np.uint16)
    response = post(nm_client, png_bytes(pixels), modality="nm")
    assert response.status_code == 200, response.text
    assert response.headers["x-model-id"] == "nm-unet"
    out = read_png(response.content)
    assert out.shape == pixels.shape and out.std() < pixels.std()  # the mean filter smoothed it


def test_a_dicom_of_the_fourth_modality_is_routed_by_its_tag(nm_client: TestClient) -> None:
    data = dicom_file("JPEG2000_UNC.dcm")  # Modality NM
    response = post(nm_client, data, metrics="none")
    assert response.status_code == 200, response.text
    assert response.headers["x-model-id"] == "nm-unet"
    derived = pydicom.dcmread(io.BytesIO(response.content))
    assert derived.Modality == "NM" and "nm-unet" in derived.DerivationDescription
    assert json.loads(response.headers["x-denoise-metrics"]) == {}


def test_the_schema_and_the_model_list_name_it(nm_client: TestClient) -> None:
    schema = nm_client.get("/openapi.json").json()
    field = schema["components"]["schemas"]["Body_denoise_v1_denoise_post"]["properties"]["modality"]
    assert {"type": "string", "enum": ["ct", "mr", "xray", "nm"]} in field["anyOf"]
    models = nm_client.get("/v1/models").json()
    assert any(m["modality"] == "nm" for m in models["models"])


def test_an_unknown_name_is_still_refused(nm_client: TestClient) -> None:
    response = post(nm_client, png_bytes(np.zeros((16, 16), np.uint8)), modality="pet")
    assert response.status_code == 422
    assert "pet" in response.text


def test_training_finds_its_noise_model() -> None:
    from training.noise_models import PoissonGaussianNoise, degrade_image, noise_model_for

    modality.register(NUCLEAR)
    try:
        assert isinstance(noise_model_for("nm"), PoissonGaussianNoise)
        clean = np.full((32, 32), 100.0, np.float32)
        spec = NormalisationSpec(kind="image_percentile", low_percentile=0.5, high_percentile=99.5)
        noisy = degrade_image("nm", clean, 1.0, np.random.default_rng(0), pixel_mm=1.0, normalisation=spec,
                              family="gaussian").noisy
        assert 0 < np.std(noisy - clean)
    finally:
        modality.unregister("nm")
