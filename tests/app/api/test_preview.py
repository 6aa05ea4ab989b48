"""The web viewer's preview: both frames in the image's units, reduced for display, with a window."""

from __future__ import annotations

import base64

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.pixels import apply_modality_lut

from app.imaging.preview import reduce
from tests.files import dicom_file, png_bytes


def plane(block: dict[str, object], rows: int, cols: int) -> np.ndarray:
    samples = np.frombuffer(base64.b64decode(str(block["data_base64"])), "<u2").reshape(rows, cols)
    low, high = float(block["low"]), float(block["high"])  # type: ignore[arg-type]
    return low + samples * (high - low) / 65535


def ask(client: TestClient, data: bytes, **form: str) -> dict[str, object]:
    response = client.post(
        "/v1/denoise",
        files={"file": ("x", data)},
        data={"preview": "true", **form},
        headers={"accept": "application/json"},
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_ct_png_preview_is_in_hounsfield_units_with_the_soft_tissue_window(client: TestClient) -> None:
    stored = (np.random.default_rng(1).normal(1064, 30, (40, 56))).astype(np.uint16)
    body = ask(client, png_bytes(stored), modality="ct")
    preview = body["preview"]
    assert (preview["rows"], preview["cols"], preview["step"], preview["frames"]) == (40, 56, 1, 1)
    assert preview["units"] == "HU" and preview["window"] == {"center": 40.0, "width": 400.0}
    np.testing.assert_allclose(plane(preview["original"], 40, 56), stored - 1024.0, atol=0.01)
    denoised = plane(preview["denoised"], 40, 56)
    assert abs(denoised.mean() - 40) < 5 and denoised.std() < stored.std()


@pytest.mark.parametrize(
    ("name", "window"),
    [("MR_small_jpeg_ls_lossless.dcm", (600.0, 1600.0)), ("examples_overlay.dcm", (450.0, 790.0))],
)
def test_dicom_preview_uses_the_files_own_window(
    client: TestClient, name: str, window: tuple[float, float]
) -> None:
    data = dicom_file(name)  # compressed (JPEG-LS), and a window with several values
    preview = ask(client, data)["preview"]
    assert preview["window"] == {"center": window[0], "width": window[1]}
    source = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
    values = apply_modality_lut(source.pixel_array, source)
    np.testing.assert_allclose(plane(preview["original"], source.Rows, source.Columns), values, atol=0.05)


def test_large_images_are_reduced_for_display_only(client: TestClient) -> None:
    stored = np.random.default_rng(2).integers(0, 4000, (1100, 300), dtype=np.uint16)
    body = ask(client, png_bytes(stored), modality="mr")
    preview = body["preview"]
    assert (preview["rows"], preview["cols"], preview["step"]) == (550, 150, 2)
    np.testing.assert_allclose(plane(preview["original"], 550, 150), reduce(stored, 2), atol=0.05)
    low, high = np.percentile(reduce(stored, 2), (0.5, 99.5))
    assert abs(preview["window"]["center"] - (low + high) / 2) < 1e-6


def test_no_preview_unless_asked(client: TestClient) -> None:
    response = client.post(
        "/v1/denoise",
        files={"file": ("x", png_bytes(np.full((16, 16), 9, np.uint8)))},
        data={"modality": "xray"},
        headers={"accept": "application/json"},
    )
    assert response.status_code == 200 and "preview" not in response.json()


def test_reduce_averages_blocks_and_keeps_the_edge() -> None:
    frame = np.arange(15, dtype=float).reshape(3, 5)
    reduced = reduce(frame, 2)
    assert reduced.shape == (2, 3)
    assert reduced[0, 0] == np.mean([0, 1, 5, 6]) and reduced[1, 2] == 14.0


def test_the_preview_is_built_from_the_images_held_nothing_decoded_again(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One decode per request, preview or not: the preview needs no memory of its own beyond
    the request's admission."""
    from app.imaging import codec

    decoded: list[int] = []
    decode = codec.decode

    def counting(data: bytes, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        decoded.append(len(data))
        return decode(data, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(codec, "decode", counting)
    budget = client.app.state.pipeline.budget  # type: ignore[attr-defined]
    body = ask(client, png_bytes(np.full((40, 56), 1064, np.uint16)), modality="ct")
    assert body["preview"]["rows"] == 40 and len(decoded) == 1  # type: ignore[index]
    assert budget.used == 0  # all of it given back
