"""One version, from the package metadata, in the OpenAPI document, the /v2 server metadata and
the derived DICOM's implementation version name."""

from __future__ import annotations

import importlib.metadata

from fastapi.testclient import TestClient

from app.imaging import dicom
from app.version import SOFTWARE_NAME, SOFTWARE_VERSION


def test_every_place_quotes_the_installed_version(client: TestClient) -> None:
    assert SOFTWARE_VERSION == importlib.metadata.version(SOFTWARE_NAME)
    assert client.get("/openapi.json").json()["info"]["version"] == SOFTWARE_VERSION
    assert client.get("/v2").json() == {
        "name": SOFTWARE_NAME,
        "version": SOFTWARE_VERSION,
        "extensions": ["binary_tensor_data"],
    }
    assert dicom.IMPLEMENTATION_VERSION_NAME == "MEDDENOISE_" + SOFTWARE_VERSION.replace(".", "")[:5]
