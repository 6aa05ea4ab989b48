"""The OpenAPI schema tells the truth about every endpoint, checked by Schemathesis in-process.

Schemathesis reads /openapi.json from the app and, for every operation (/v1/denoise with its
multipart form, /v1/models, /healthz, /readyz, /metrics, the /v2 Open Inference Protocol
routes), generates requests that follow the schema and requests that break it. Each answer must
not be a 5xx, must have a documented status code and content type, and its JSON body must match
the documented schema. A failure here means the service or its schema is wrong, and the fix is
in the route's declarations (app/api/routes, app/api/schemas.py) or in the service.

Reproducible and bounded: derandomized, no example database, ``EXAMPLES`` per operation.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis import checks
from schemathesis.python import asgi

from app.main import create_app
from app.settings import Settings
from tests.app.fuzz import builders as b
from tests.app.fuzz.bounds import TIME_LIMIT, reproducible
from tests.files import png_bytes
from tests.tiny_models import write_model_set

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "50"))
SMALL_PNG = png_bytes(np.full((24, 24), 1100, np.uint16))
SMALL_DICOM = b.ct_bytes()
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]

# Schemathesis builds one test per operation when this module is collected, so the app (not its
# models: the lifespan loads them, on the first request) exists at import. pytest 9 breaks
# Schemathesis's fixture-based loader (``from_fixture``), which would have deferred it.
MODELS_DIR = Path(tempfile.mkdtemp(prefix="schema-models-"))
MODEL_IDS = ["ct-autoencoder", "ct-unet", "mr-unet", "xray-unet"]  # tests/tiny_models.write_model_set


def _schema(**settings: Any) -> Any:
    app = create_app(
        Settings(
            models_dir=MODELS_DIR, intra_op_threads=1, tile_size=128, max_upload_bytes=1 << 20,
            # The DICOM node on, so its routes answer what they do when used (nothing listens on
            # port 9: deliveries wait in the spool).
            forward_to="http://127.0.0.1:9/dicom-web", spool_dir=MODELS_DIR / "spool", **settings
        )
    )
    loaded = schemathesis.openapi.from_dict(app.openapi())
    loaded.app = app  # requests go to the app in-process, as from_asgi would send them
    return loaded


schema = _schema()
# With API keys required, the protected operations answer 401 to the made-up or missing keys
# Schemathesis sends: that answer must be in the schema too.
keyed_schema = _schema(api_keys="schema-test-key-0123456789")


@pytest.fixture(scope="module", autouse=True)
def served_models() -> Iterator[None]:
    write_model_set(MODELS_DIR)
    yield
    asgi.shutdown_lifespans()  # stops the app's batcher threads now, not at interpreter exit
    shutil.rmtree(MODELS_DIR, ignore_errors=True)


# Generated data alone almost never names a served model or sends a real image, so many of the
# requests get one: the answers that do work (200s, the model's own errors) are checked too.


@schema.hook
def flatmap_path_parameters(context: Any, parameters: dict[str, Any]) -> st.SearchStrategy[Any]:
    if "{name}" not in context.operation.path:
        return st.just(parameters)
    return st.sampled_from([parameters, *({**parameters, "name": name} for name in MODEL_IDS)])


def _infer_body(n: int, side: int, binary_output: bool, request_id: str) -> dict[str, Any]:
    values = np.random.default_rng(side).uniform(0, 1, n * side * side).round(4).tolist()
    return {
        "id": request_id,
        "inputs": [{"name": "noisy", "datatype": "FP32", "shape": [n, 1, side, side], "data": values}],
        "parameters": {"binary_data_output": binary_output},
    }


@schema.hook
def flatmap_body(context: Any, body: Any) -> st.SearchStrategy[Any]:
    path = context.operation.path
    if path == "/v1/denoise" and isinstance(body, dict):
        # The fields a real image can be sent with; the others (strength, reference, a made-up
        # model name) are refused whatever the image, and are sent as generated in ``body``.
        kept = {key: value for key, value in body.items() if key in ("modality", "metrics", "preview")}
        images = st.sampled_from([SMALL_PNG, SMALL_DICOM]).map(lambda image: {**kept, "file": image})
        return st.one_of(st.just(body), images)
    if path.endswith("/infer") and isinstance(body, dict):
        sizes = st.integers(1, 2), st.sampled_from([8, 16]), st.booleans(), st.text(max_size=8)
        return st.one_of(st.just(body), st.builds(_infer_body, *sizes))
    return st.just(body)


@pytest.mark.timeout(TIME_LIMIT * 2)
@schema.parametrize()
@reproducible(EXAMPLES)
def test_every_answer_is_documented(case: Any) -> None:
    case.call_and_validate(checks=CHECKS)


@pytest.mark.timeout(TIME_LIMIT)
@keyed_schema.parametrize()
@reproducible(max(EXAMPLES // 5, 5))
def test_with_api_keys_every_answer_is_documented(case: Any) -> None:
    case.call_and_validate(checks=CHECKS)
