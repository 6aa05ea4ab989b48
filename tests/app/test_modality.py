"""The modalities are named once, and the card, the codecs and training take them from there."""

from __future__ import annotations

from typing import get_args

from app import modality
from app.inference import card


def test_the_modalities_are_named_once() -> None:
    assert modality.MODALITIES == ("ct", "mr", "xray") == get_args(modality.Modality)
    assert card.Modality is modality.Modality
