"""The modality profiles: one home for each modality's facts, open to a fourth."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from app import modality
from app.inference import card
from app.modality import Modality, ModalityProfile


def test_the_built_in_modalities_and_their_dicom_codes() -> None:
    assert modality.modality_names() == ("ct", "mr", "xray")
    assert card.Modality is modality.Modality
    assert modality.from_dicom_code("CT") == "ct" and modality.from_dicom_code(" dx ") == "xray"
    assert modality.from_dicom_code("MG") == "xray" and modality.from_dicom_code("US") is None
    assert modality.spelled_out() == "ct, mr or xray"


def test_the_type_accepts_registered_names_only_and_lists_them_in_the_schema() -> None:
    class Request(BaseModel):
        modality: Modality

    assert Request(modality="mr").modality == "mr"
    with pytest.raises(ValidationError, match="unknown modality 'us'"):
        Request(modality="us")
    assert Request.model_json_schema()["properties"]["modality"]["enum"] == ["ct", "mr", "xray"]


def test_a_registered_profile_is_known_everywhere_until_unregistered() -> None:
    class Request(BaseModel):
        modality: Modality

    extra = ModalityProfile(name="us", title="Ultrasound", dicom_codes=("US",), units="stored value",
                            noise_model="rician", gaussian_units="sigma in percent")
    modality.register(extra)
    try:
        assert Request(modality="us").modality == "us"
        assert modality.from_dicom_code("US") == "us" and modality.profile("us") is extra
        assert "us" in Request.model_json_schema()["properties"]["modality"]["enum"]
    finally:
        modality.unregister("us")
    assert modality.from_dicom_code("US") is None


def test_a_dicom_code_belongs_to_one_modality() -> None:
    clash = ModalityProfile(name="dx2", title="DX", dicom_codes=("DX",), units="stored value",
                            noise_model="poisson_gaussian", gaussian_units="%")
    with pytest.raises(ValueError, match="already belongs to xray"):
        modality.register(clash)
    assert "dx2" not in modality.modality_names()
