"""The modalities the service knows, named once: every layer (imaging, inference, training, the
API) takes the type from here rather than from the model card's module."""

from __future__ import annotations

from typing import Literal, get_args

Modality = Literal["ct", "mr", "xray"]
MODALITIES: tuple[Modality, ...] = get_args(Modality)
