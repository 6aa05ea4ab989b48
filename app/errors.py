"""Domain errors raised by the inner layers (imaging, inference, quality).

Each error carries a short machine-readable ``code`` and a ``detail`` sentence written for the
person who sent the request: what was wrong and how to fix it. Only ``app/api/errors.py`` turns
them into HTTP responses, so the status code of every failure is decided in one place. The
detail never quotes library exception text, which can carry file contents or internals.
"""

from __future__ import annotations


class DenoiseError(Exception):
    """Base of every error a client can cause or the service reports by name."""

    code = "denoise_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidImage(DenoiseError):
    """The bytes are not a readable image: not an image at all, truncated or corrupt."""

    code = "invalid_image"


class UnsupportedImage(DenoiseError):
    """A readable image of a kind the service does not denoise (colour, palette, 1-bit ...)."""

    code = "unsupported_image"


class MissingPixelData(DenoiseError):
    """A DICOM object without an image in it (a report, a plan, a structured document)."""

    code = "missing_pixel_data"


class ImageTooLarge(DenoiseError):
    """The upload is larger than the configured byte or pixel limit."""

    code = "image_too_large"


class OverMemoryBudget(DenoiseError):
    """The request would need more memory than the service's budget allows any one request."""

    code = "over_memory_budget"


class NotDenoisable(DenoiseError):
    """A valid image this service must not denoise, or whose result could not be filed: the
    ``code`` says which (no Study Instance UID, a phase or complex-component image)."""

    code = "not_denoisable"

    def __init__(self, detail: str, code: str | None = None) -> None:
        super().__init__(detail)
        if code is not None:
            self.code = code


class NotAcceptable(DenoiseError):
    """The answer cannot be given in any media type the client's Accept header allows."""

    code = "not_acceptable"


class NodeNotConfigured(DenoiseError):
    """A DICOM node endpoint was called on a service without a delivery destination."""

    code = "node_not_configured"


class UnknownModality(DenoiseError):
    code = "unknown_modality"


class ModalityNotServed(DenoiseError):
    """A modality this service knows, for which no model is installed (not a failed load)."""

    code = "modality_not_served"


class ModelNotFound(DenoiseError):
    code = "unknown_model"


class ModelUnavailable(DenoiseError):
    """The request is valid but no loaded model can serve it (not loaded, checksum mismatch ...)."""

    code = "model_unavailable"


class ServiceBusy(DenoiseError):
    """The inference queue is full: the client should retry after ``retry_after_s`` seconds."""

    code = "service_busy"

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class InferenceFailed(DenoiseError):
    """The model itself failed while running on this request's input (the service's fault, not
    the client's): only the requests whose tiles fail are answered with it."""

    code = "inference_failed"


class RequestTimedOut(DenoiseError):
    """The request's work passed its deadline (``DENOISE_REQUEST_TIMEOUT_S``) and was stopped."""

    code = "request_timeout"


class ClientGone(DenoiseError):
    """The client disconnected: its work was stopped, and there is nobody to answer."""

    code = "client_disconnected"


class InvalidRequest(DenoiseError):
    """A request field is missing, inconsistent with the image, or not supported by the model."""

    code = "invalid_request"

    def __init__(self, detail: str, code: str | None = None) -> None:
        super().__init__(detail)
        if code is not None:
            self.code = code


class Unauthorized(DenoiseError):
    """The service requires an API key, and the request carried none or one it does not know.

    ``key_offered`` tells the two apart for the client (RFC 6750's ``invalid_token``) without
    saying anything about the keys the service holds.
    """

    code = "api_key_required"

    def __init__(self, detail: str, *, key_offered: bool) -> None:
        super().__init__(detail)
        self.key_offered = key_offered
        if key_offered:
            self.code = "api_key_invalid"
