"""The Open Inference Protocol (KServe v2, as Triton speaks it) over HTTP: tensors in and out.

Pure functions, no FastAPI: ``parse_infer_request`` reads a request body (JSON, or JSON followed
by raw tensor bytes under the binary tensor data extension) into the one FP32 input tensor the
model takes, and ``encode_infer_response`` writes the output tensor back the way the client asked
(JSON ``data`` or binary). Protocol:
https://github.com/kserve/open-inference-protocol/blob/main/specification/protocol/inference_rest.md
and Triton's binary extension (``extension_binary_data.md`` in triton-inference-server/server).

Every problem is an ``OipError`` with a sentence for the caller; the route answers it as the
protocol's ``{"error": "<message>"}``.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

# The header that says how long the JSON part is when binary tensors follow it.
HEADER_LENGTH = "inference-header-content-length"
DATATYPE = "FP32"
_FLOAT32_LE = np.dtype("<f4")


class OipError(Exception):
    """A request the protocol layer refuses, with the HTTP status and a message for the caller."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        code: str = "invalid_inference_request",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.headers = headers


@dataclass(frozen=True)
class TensorContract:
    """What a model accepts and returns: names from its card, FP32 [N, C, H, W] in, [N, 1, H, W]
    out; C is 2 (the image, then its noise map) for a model conditioned on the noise level."""

    input_name: str
    output_name: str
    spatial_multiple: int
    max_pixels: int
    input_channels: int = 1
    max_json_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class InferRequest:
    tensor: np.ndarray  # float32 (N, 1, H, W), C-contiguous
    request_id: str | None
    binary_output: bool


def decompress(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """Undo ``Content-Encoding: gzip / deflate`` (tritonclient's request compression), bounded."""
    if not encoding or encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise OipError(f"Content-Encoding '{encoding}' is not supported; send gzip, deflate or none.", 415)
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        data = inflater.decompress(body, max_bytes + 1)
    except zlib.error as error:
        raise OipError(f"The body is not valid {encoding} data.") from error
    if len(data) > max_bytes or inflater.unconsumed_tail:
        raise OipError(
            f"The decompressed request is larger than this service's limit of {max_bytes} bytes.",
            413,
            "upload_too_large",
        )
    return data


# A JSON number longer than this is no tensor value or shape; Python would parse a 4000-digit
# integer (quadratic time) before any check saw it.
_MAX_NUMBER_CHARACTERS = 40
_MAX_ID_CHARACTERS = 256
_MIN_CONTAINERS = 64
# A value in a JSON response is ~20 characters and, while encoded, a Python float of 32 bytes:
# JSON output is for small tensors; larger ones ask for binary output.
JSON_BYTES_PER_OUTPUT_VALUE = 16


def _bounded_int(text: str) -> int:
    if len(text) > _MAX_NUMBER_CHARACTERS:
        raise ValueError(f"a number of {len(text)} digits")
    return int(text)


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _parameters(holder: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = holder.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise OipError(f"'parameters' of {where} must be a JSON object, got {type(parameters).__name__}.")
    return parameters


def _split(body: bytes, header_length: str | None, max_json_bytes: int) -> tuple[dict[str, Any], bytes]:
    if header_length is None:
        json_part, binary = body, b""
    else:
        # isdigit alone admits digits int() reads differently or not at all ('²', Arabic-Indic).
        if not (header_length.isascii() and header_length.isdigit()) or int(header_length) > len(body):
            raise OipError(
                f"Inference-Header-Content-Length is {header_length!r} but the body has {len(body)} "
                "bytes; it must be the length of the JSON part that starts the body."
            )
        json_part, binary = body[: int(header_length)], body[int(header_length) :]
    if len(json_part) > max_json_bytes:
        raise OipError(
            f"The request's JSON part has {len(json_part)} bytes, more than this service's limit of "
            f"{max_json_bytes} for JSON; send the tensor as binary data (binary_data_size and "
            "Inference-Header-Content-Length), as tritonclient does with binary_data=True.",
            413,
            "upload_too_large",
        )
    # Every list or object is a Python object of 56 bytes or more, so one per 3 bytes ('[],')
    # would make 16 MiB of JSON cost over a gigabyte. A tensor's nested data has at most one
    # list per row of 4 values (W is a multiple of 4, each value 2 bytes or more): one per 8 bytes.
    containers = json_part.count(b"[") + json_part.count(b"{")
    if containers > max(_MIN_CONTAINERS, len(json_part) // 8):
        raise OipError(
            f"The request's JSON holds {containers} lists and objects in {len(json_part)} bytes, more "
            "than any tensor needs; send the data as a flat list, or as binary tensor data."
        )
    try:
        header = json.loads(json_part, parse_int=_bounded_int, parse_constant=_no_constant)
    except RecursionError as error:
        raise OipError("The request's JSON is nested too deeply; a tensor needs at most 5 levels.") from error
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors too
        raise OipError(
            "The request's JSON part is not valid JSON (or holds a number no tensor has: over "
            f"{_MAX_NUMBER_CHARACTERS} digits, NaN or Infinity); with binary tensors, set "
            "Inference-Header-Content-Length to the JSON part's length."
        ) from error
    if not isinstance(header, dict):
        raise OipError("The request must be a JSON object with an 'inputs' list.")
    return header, binary


def _check_shape(shape: object, contract: TensorContract) -> tuple[int, int, int, int]:
    if (
        not isinstance(shape, list)
        or len(shape) != 4
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape)
    ):
        raise OipError(f"Input shape must be [N, {contract.input_channels}, H, W] (4 integers), got {shape!r}.")
    n, channels, rows, cols = shape
    if n < 1 or rows < 1 or cols < 1 or channels != contract.input_channels:
        raise OipError(
            f"Input shape must be [N, {contract.input_channels}, H, W] with N, H, W >= 1, got {shape}"
            + (" (channel 0 the image, channel 1 its noise map)." if contract.input_channels == 2 else ".")
        )
    if rows % contract.spatial_multiple or cols % contract.spatial_multiple:
        raise OipError(
            f"H and W must be multiples of {contract.spatial_multiple} for this model (got {rows} x "
            f"{cols}); pad the image (reflect) and crop the output, or use /v1/denoise, which does it."
        )
    if n * rows * cols > contract.max_pixels:
        raise OipError(
            f"The tensor has {n * rows * cols} pixels, more than this service's limit of "
            f"{contract.max_pixels}; send fewer images per request.",
            413,
            "image_too_large",
        )
    return n, channels, rows, cols


def _tensor_data(
    entry: dict[str, Any], shape: tuple[int, ...], binary: bytes, offset: int
) -> tuple[np.ndarray, int]:
    count = int(np.prod(shape))
    size = _parameters(entry, "the input").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size != count * 4:
            raise OipError(
                f"binary_data_size is {size!r} but an FP32 tensor of shape {list(shape)} has {count * 4} bytes."
            )
        if offset + size > len(binary):
            raise OipError(
                f"The body holds {len(binary) - offset} bytes of tensor data, {size} were declared."
            )
        array = np.frombuffer(binary, dtype=_FLOAT32_LE, count=count, offset=offset)
        return array.astype(np.float32).reshape(shape), offset + size
    if "data" not in entry:
        raise OipError("The input has neither 'data' nor a 'binary_data_size' parameter.")
    try:
        array = np.asarray(entry["data"], dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise OipError("The input's 'data' must be numbers (a flat or nested list, row-major).") from error
    if array.size != count:
        raise OipError(f"The input's 'data' has {array.size} values; shape {list(shape)} needs {count}.")
    return array.reshape(shape), offset


def parse_infer_request(body: bytes, header_length: str | None, contract: TensorContract) -> InferRequest:
    header, binary = _split(body, header_length, contract.max_json_bytes)
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise OipError(
            f"Send exactly one input, '{contract.input_name}' (FP32 [N, {contract.input_channels}, H, W])."
        )
    entry = inputs[0]
    if entry.get("name") != contract.input_name:
        raise OipError(f"Unknown input {entry.get('name')!r}; this model's input is '{contract.input_name}'.")
    if entry.get("datatype") != DATATYPE:
        raise OipError(f"The input's datatype must be FP32, got {entry.get('datatype')!r}.")
    shape = _check_shape(entry.get("shape"), contract)
    tensor, used = _tensor_data(entry, shape, binary, 0)
    if used != len(binary):
        raise OipError(f"The body has {len(binary) - used} bytes after the declared tensor data.")
    if not np.isfinite(tensor).all():
        raise OipError("The input holds NaN or infinite values; send finite values in the model's units.")
    request_id = header.get("id")
    if request_id is not None and (not isinstance(request_id, str) or len(request_id) > _MAX_ID_CHARACTERS):
        raise OipError(f"'id' must be a string of at most {_MAX_ID_CHARACTERS} characters.")
    binary_output = _binary_output(header, contract)
    output_values = shape[0] * shape[2] * shape[3]
    if not binary_output and output_values * JSON_BYTES_PER_OUTPUT_VALUE > contract.max_json_bytes:
        raise OipError(
            f"The output would have {output_values} values, too many to answer as JSON here (at most "
            f"{contract.max_json_bytes // JSON_BYTES_PER_OUTPUT_VALUE}); ask for binary output "
            "(the output's parameter binary_data: true, as tritonclient does with binary_data=True).",
            413,
            "json_output_too_large",
        )
    return InferRequest(
        tensor=np.ascontiguousarray(tensor),
        request_id=str(request_id) if request_id is not None else None,
        binary_output=binary_output,
    )


def _binary_output(header: dict[str, Any], contract: TensorContract) -> bool:
    binary = bool(_parameters(header, "the request").get("binary_data_output", False))
    outputs = header.get("outputs")
    if outputs is None:
        return binary
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise OipError("'outputs' must be a list of objects with a 'name'.")
    for output in outputs:
        if output.get("name") != contract.output_name:
            raise OipError(
                f"Unknown output {output.get('name')!r}; this model's output is '{contract.output_name}'."
            )
        binary = bool(_parameters(output, "an output").get("binary_data", binary))
    return binary


def encode_infer_response(
    model_name: str, model_version: str, output_name: str, output: np.ndarray, request: InferRequest
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (content type, and the JSON length when binary follows)."""
    tensor = np.ascontiguousarray(output, dtype=_FLOAT32_LE)
    described: dict[str, Any] = {"name": output_name, "datatype": DATATYPE, "shape": list(tensor.shape)}
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.request_id is not None:
        response["id"] = request.request_id
    response["outputs"] = [described]
    if not request.binary_output:
        described["data"] = tensor.ravel().tolist()
        try:
            body = json.dumps(response, allow_nan=False).encode()
        except ValueError as error:  # JSON has no NaN; the binary form carries any float
            # The client's input did it (values far outside the model's [0, 1] range): a 4xx.
            raise OipError(
                "The output holds NaN or infinite values, which JSON cannot carry; send inputs in "
                "the model's [0, 1] range, or ask for binary output.",
                422,
                "non_finite_output",
            ) from error
        return body, {"content-type": "application/json"}
    raw = tensor.tobytes()
    described["parameters"] = {"binary_data_size": len(raw)}
    head = json.dumps(response).encode()
    headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
    return head + raw, headers
