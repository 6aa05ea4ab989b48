"""The models in models/ as the service serves them: cards valid against their schema, every model
loaded, and the conditioned defaults honour their contract on real images."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from app.inference.card import ModelCard, read_card
from app.inference.engine import PhaseTimer
from app.main import create_app
from app.quality.noise import wavelet_mad_sigma
from app.quality.reference import psnr
from app.settings import Settings
from tests.files import dicom_file, png_bytes, read_png

MODELS = Path(__file__).resolve().parents[2] / "models"
CARDS = sorted(MODELS.glob("*/*/card.json"))


@pytest.fixture(scope="module")
def served() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(models_dir=MODELS, intra_op_threads=2))) as client:
        yield client


@pytest.mark.parametrize("card_path", CARDS, ids=[str(p.parent.relative_to(MODELS)) for p in CARDS])
def test_each_card_validates_against_the_schema(card_path: Path) -> None:
    raw = json.loads(card_path.read_text())
    card = ModelCard.model_validate(raw)  # unknown keys and wrong types are refused
    assert card == read_card(card_path.parent)
    assert card.test_metrics["split"] == "unseen sources (leave one package out)"
    if card.default:
        assert card.noise_map is not None and card.input.channels == 2
        assert card.validation_metrics["trained_on"]


def test_every_committed_model_is_served(served: TestClient) -> None:
    body = served.get("/v1/models").json()
    assert body["unserved"] == []
    assert {m["id"] for m in body["models"]} == {read_card(p.parent).id for p in CARDS}


def noisy_ct(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    ds = pydicom.dcmread(io.BytesIO(dicom_file("CT_small.dcm")))
    clean = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return clean, clean + np.random.default_rng(seed).normal(0.0, 30.0, clean.shape)


def test_more_strength_leaves_less_noise_in_the_output(served: TestClient) -> None:
    pipeline = served.app.state.pipeline  # type: ignore[attr-defined]
    denoiser = pipeline.denoisers["ct-unet"]
    _, noisy = noisy_ct()
    left = []
    for strength in (0.25, 0.5, 1.0, 2.0, 4.0):
        frames, estimates = denoiser.denoise_with_level(noisy[np.newaxis], PhaseTimer(), strength=strength)
        assert estimates[0].strength == strength
        left.append(wavelet_mad_sigma(frames[0]))
    assert left == sorted(left, reverse=True) and left[0] > 1.5 * left[-1]
    assert left[0] < wavelet_mad_sigma(noisy)


def test_the_estimated_level_is_the_slices_own_noise_plus_the_added(served: TestClient) -> None:
    """30 HU of white noise on a real slice that carries noise of its own: the estimate is the
    total, the two added in quadrature."""
    denoiser = served.app.state.pipeline.denoisers["ct-unet"]  # type: ignore[attr-defined]
    clean, noisy = noisy_ct(1)
    _, own = denoiser.denoise_with_level(clean[np.newaxis], PhaseTimer())
    _, total = denoiser.denoise_with_level(noisy[np.newaxis], PhaseTimer())
    assert total[0].level == pytest.approx(np.hypot(30.0, own[0].level), rel=0.1)


def test_signed_dicom_and_clipped_png_of_a_magnitude_mr_agree(served: TestClient) -> None:
    """Additive noise takes a magnitude image below zero: sent as signed DICOM and as PNG (which
    clips on the way in), the model's answers are within 0.1 dB of each other.

    MR_small is a real scan with noise of its own: the service's estimator reads 5.9% of its
    99.5th percentile on it before anything is added. At 10% added, what the model removes is
    mostly the added noise, so beating the noisy input against this reference means denoising."""
    ds = pydicom.dcmread(io.BytesIO(dicom_file("MR_small.dcm")))
    clean = ds.pixel_array.astype(np.float64)
    sigma = 0.10 * np.percentile(clean, 99.5)
    noisy = np.round(clean + np.random.default_rng(2).normal(0.0, sigma, clean.shape)).astype(np.int16)
    assert (noisy < 0).any()
    ds.PixelData = noisy.tobytes()
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 1, 16, 15
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        ds.pop(keyword, None)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    from_dicom = served.post("/v1/denoise", files={"file": ("mr.dcm", buffer.getvalue())})
    from_png = served.post("/v1/denoise", data={"modality": "mr"},
                           files={"file": ("mr.png", png_bytes(np.clip(noisy, 0, None).astype(np.uint16)))})
    assert from_dicom.status_code == 200 and from_png.status_code == 200
    data_range = float(clean.max() - clean.min())
    dicom_psnr = psnr(clean, pydicom.dcmread(io.BytesIO(from_dicom.content)).pixel_array.astype(np.float64),
                      data_range)
    png_psnr = psnr(clean, read_png(from_png.content).astype(np.float64), data_range)
    assert abs(dicom_psnr - png_psnr) <= 0.1
    assert dicom_psnr > psnr(clean, noisy.astype(np.float64), data_range)
