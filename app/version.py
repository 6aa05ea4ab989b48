"""The software's name and version, from its installed package metadata: the one source that
the OpenAPI document, the Open Inference Protocol's server metadata and the derived DICOM
(Software Versions, Derivation Description, Implementation Version Name) all quote."""

from __future__ import annotations

import importlib.metadata

SOFTWARE_NAME = "medical-denoise"
try:
    SOFTWARE_VERSION = importlib.metadata.version(SOFTWARE_NAME)
except importlib.metadata.PackageNotFoundError:  # running from a checkout that was never installed
    SOFTWARE_VERSION = "unknown"
