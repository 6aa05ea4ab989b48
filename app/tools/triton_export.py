"""Export the served models as a Triton model repository, for Triton Inference Server or KServe.

``denoise-triton-export --out triton-models`` (or ``python -m app.tools.triton_export``) writes,
for every model under the models folder whose ONNX file matches its card's checksum::

    <out>/<model_id>/config.pbtxt     ONNX Runtime backend, tensors from the card, instance group,
                                      dynamic batching, warm-up, optionally TensorRT
    <out>/<model_id>/1/model.onnx     the committed file, byte for byte
    <out>/<model_id>/card.json        the card, for the normalisation a client must apply

The defaults suit this service as Triton's front end (``DENOISE_INFERENCE_URL``): Triton's batch
sizes are the service's micro-batches, and its warm-up runs them at the service's tile shape, so
the first live request does not pay for an engine build.

Triton serves the bare model, like this service's ``/v2`` endpoints: FP32 [N, C, H, W] (C the
card's input channels: 2 for a model conditioned on a noise map) in the model's [0, 1] range
after the card's normalisation, H and W multiples of the card's
``spatial_multiple``; decoding, normalisation and tiling stay with the client. The model name and
version (``1``) are the ones ``/v2`` uses, so a client moves between the two by changing the URL.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from app.inference.card import CARD_FILENAME, ModelCard, read_card
from app.inference.plan import tile_plan
from app.settings import DEFAULT_MODELS_DIR, Settings

MODEL_VERSION = "1"
CONFIG_FILENAME = "config.pbtxt"

# The service's own defaults, so that the repository fits front ends run as shipped: Triton's
# batches are the service's micro-batches (DENOISE_BATCH_MAX_SIZE) and the warm-up shapes are the
# service's tiles (DENOISE_TILE_SIZE and its buckets, from the service's own tile plan).
_SERVICE = Settings.model_fields
SERVICE_BATCH_MAX_SIZE: int = _SERVICE["batch_max_size"].default
SERVICE_TILE_SIZE: int = _SERVICE["tile_size"].default


def _bound(field: str, name: str) -> int:
    """A bound (``ge`` or ``le``) of a Settings field, so the export accepts what the service does."""
    return next(getattr(m, name) for m in _SERVICE[field].metadata if getattr(m, name, None) is not None)


TILE_SIZE_RANGE = (_bound("tile_size", "ge"), _bound("tile_size", "le"))

DEFAULT_TRT_CACHE = "/cache/trt"
# The ONNX Runtime backend's own default (1 GiB), written out so the config says what it gets.
DEFAULT_TRT_WORKSPACE_BYTES = 1 << 30


@dataclass(frozen=True)
class TritonOptions:
    # Triton's largest batch; the front ends' DENOISE_BATCH_MAX_SIZE must not exceed it.
    max_batch_size: int = SERVICE_BATCH_MAX_SIZE
    # Short: the front ends have already batched what they could; Triton only joins calls that
    # arrive together (several requests, several front ends).
    max_queue_delay_us: int = 2000
    instance_kind: str = "KIND_GPU"  # or KIND_CPU
    instances: int = 1
    tensorrt: bool = False  # ORT's TensorRT accelerator, with its engine cache
    # FP16 only on request: the issue admits it where evaluation shows <= 0.1 dB PSNR loss, and
    # that has not been measured for the committed models.
    fp16: bool = False
    trt_cache: str = DEFAULT_TRT_CACHE
    trt_workspace_bytes: int = DEFAULT_TRT_WORKSPACE_BYTES
    warmup_size: int = SERVICE_TILE_SIZE  # the tile size the front ends run with


def _quote(text: str) -> str:
    return json.dumps(text)  # protobuf text format accepts JSON's string escapes


def preferred_batch_sizes(max_batch_size: int) -> list[int]:
    """The batch sizes Triton should aim for: powers of two below ``max_batch_size``, and it.

    With the defaults, 1, 2 and 4: what the service's micro-batcher sends most (a lone request's
    tile, or full batches). Triton dispatches a preferred size without waiting out the queue
    delay, so 1 among them keeps a lone call from waiting; calls queued while the instances are
    busy are joined into the larger sizes.
    """
    sizes = [1 << k for k in range(max_batch_size.bit_length()) if 1 << k < max_batch_size]
    return [*sizes, max_batch_size]


def warmup_shapes(card: ModelCard, tile_size: int) -> list[tuple[int, int]]:
    """The tile shapes a front end sends this model: with an inference backend, DENOISE_TILE_BUCKETS
    'auto' pads every tile to half the tile size or the tile size, on the model's pooling grid
    (the plan grows the tile where the model's margins would not fit). The service's own plan,
    with its defaults and this tile size."""
    service = Settings.model_construct(tile_size=tile_size)  # defaults, not this shell's DENOISE_*
    return tile_plan(card, service, on_gpu=True).bucket_shapes()


def _dynamic_batching(options: TritonOptions) -> list[str]:
    sizes = ", ".join(str(size) for size in preferred_batch_sizes(options.max_batch_size))
    return [
        "dynamic_batching {",
        f"  preferred_batch_size: [ {sizes} ]",
        f"  max_queue_delay_microseconds: {options.max_queue_delay_us}",
        "}",
    ]


def _tensorrt(options: TritonOptions) -> list[str]:
    """ORT's TensorRT accelerator (parameter keys of Triton's ONNX Runtime backend). Engines are
    cached so a restarted Triton loads them instead of building them again (minutes)."""
    parameters = {
        "precision_mode": "FP16" if options.fp16 else "FP32",
        "max_workspace_size_bytes": str(options.trt_workspace_bytes),
        "trt_engine_cache_enable": "true",
        "trt_engine_cache_path": options.trt_cache,
    }
    return [
        "optimization { execution_accelerators { gpu_execution_accelerator [ {",
        '  name: "tensorrt"',
        *(f"  parameters {{ key: {_quote(k)} value: {_quote(v)} }}" for k, v in parameters.items()),
        "} ] } }",
    ]


def _model_warmup(card: ModelCard, options: TritonOptions) -> list[str]:
    """One zero-filled sample per preferred batch size and tile shape the front ends send: Triton
    runs them at load, so the engine builds (TensorRT) and first allocations happen before the
    model is ready, not in the first live request. Dims exclude the batch, as max_batch_size > 0
    wants."""
    samples = []
    for rows, cols in warmup_shapes(card, options.warmup_size):
        dims = f"[ {card.input.channels}, {rows}, {cols} ]"
        tensor = f"{{ data_type: TYPE_FP32 dims: {dims} zero_data: true }}"
        samples += [
            f'  {{ name: "batch-{size}-{rows}x{cols}" batch_size: {size} '
            f"inputs {{ key: {_quote(card.input.name)} value: {tensor} }} }}"
            for size in preferred_batch_sizes(options.max_batch_size)
        ]
    return ["model_warmup [", ",\n".join(samples), "]"]


def config_pbtxt(card: ModelCard, options: TritonOptions) -> str:
    """Triton's model configuration (protobuf text format) for one model card."""
    parameters = {
        "card_version": card.version,
        "modality": card.modality,
        "spatial_multiple": str(card.spatial_multiple),
        "receptive_field": str(card.receptive_field),
        "normalisation": card.normalisation.model_dump_json(exclude_none=True),
    }
    lines = [
        f"name: {_quote(card.id)}",
        'platform: "onnxruntime_onnx"',
        'backend: "onnxruntime"',
        f"max_batch_size: {options.max_batch_size}",
        "input [",
        f"  {{ name: {_quote(card.input.name)} data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ {card.input.channels}, -1, -1 ] }}",
        "]",
        "output [",
        f"  {{ name: {_quote(card.output.name)} data_type: TYPE_FP32 dims: [ 1, -1, -1 ] }}",
        "]",
        *_dynamic_batching(options),
        f"instance_group [ {{ kind: {options.instance_kind} count: {options.instances} }} ]",
        f"version_policy: {{ specific: {{ versions: [ {MODEL_VERSION} ] }} }}",
    ]
    if options.tensorrt:
        lines += _tensorrt(options)
    lines += _model_warmup(card, options)
    for key, value in parameters.items():
        lines.append(f"parameters {{ key: {_quote(key)} value: {{ string_value: {_quote(value)} }} }}")
    return "\n".join(lines) + "\n"


class ExportError(Exception):
    pass


def export_model(card_dir: Path, out: Path, options: TritonOptions) -> Path:
    """Write one model's folder under ``out``; refuse a file whose checksum differs from its card."""
    card = read_card(card_dir)
    source = card_dir / card.file
    data = source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != card.sha256.lower():
        raise ExportError(f"{source}: sha256 {digest} differs from the card's {card.sha256}")
    target = out / card.id
    if target.exists():
        shutil.rmtree(target)
    (target / MODEL_VERSION).mkdir(parents=True)
    (target / MODEL_VERSION / "model.onnx").write_bytes(data)
    shutil.copyfile(card_dir / CARD_FILENAME, target / CARD_FILENAME)
    (target / CONFIG_FILENAME).write_text(config_pbtxt(card, options))
    return target


def export_repository(models_dir: Path, out: Path, options: TritonOptions) -> list[Path]:
    card_dirs = sorted(p.parent for p in models_dir.rglob(CARD_FILENAME))
    if not card_dirs:
        raise ExportError(f"no {CARD_FILENAME} under {models_dir}")
    ids = [read_card(d).id for d in card_dirs]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise ExportError(f"model id(s) {', '.join(duplicated)} appear more than once under {models_dir}")
    out.mkdir(parents=True, exist_ok=True)
    return [export_model(card_dir, out, options) for card_dir in card_dirs]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="denoise-triton-export",
        description="Write the models as a Triton model repository (ONNX Runtime backend, dynamic "
        "batching, warm-up), with defaults that suit this service's front ends.",
    )
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR, help="default: %(default)s")
    parser.add_argument("--out", type=Path, required=True, help="the model repository to write")
    # The old names stay as aliases: scripts written for them keep working.
    parser.add_argument(
        "--max-batch", "--max-batch-size", dest="max_batch", type=int,
        default=TritonOptions.max_batch_size,
        help="Triton's max_batch_size; preferred batch sizes are the powers of two below it and "
        "it (default: %(default)s, DENOISE_BATCH_MAX_SIZE's). At least the front ends' "
        "DENOISE_BATCH_MAX_SIZE, or Triton refuses their batches",
    )
    parser.add_argument(
        "--queue-delay-us", "--max-queue-delay-us", dest="queue_delay_us", type=int,
        default=TritonOptions.max_queue_delay_us,
        help="dynamic batching's max_queue_delay_microseconds (default: %(default)s)",
    )
    parser.add_argument(
        "--instance-kind", choices=("gpu", "cpu"), default="gpu", help="default: %(default)s"
    )
    parser.add_argument(
        "--cpu", dest="instance_kind", action="store_const", const="cpu",
        help="KIND_CPU instances, for a Triton without a GPU (same as --instance-kind cpu)",
    )
    parser.add_argument(
        "--instances", type=int, default=TritonOptions.instances,
        help="per GPU (or in all, CPU); default: %(default)s",
    )
    parser.add_argument(
        "--tensorrt", action="store_true",
        help="ORT's TensorRT accelerator (FP32), its engines cached under --trt-cache",
    )
    parser.add_argument(
        "--fp16", action="store_true",
        help="with --tensorrt: FP16 engines; not evaluated against the models' FP32 quality",
    )
    parser.add_argument(
        "--trt-cache", default=TritonOptions.trt_cache,
        help="with --tensorrt: the engine cache folder in the Triton container, absolute, writable "
        "and kept across restarts (default: %(default)s)",
    )
    parser.add_argument(
        "--trt-workspace-bytes", type=int, default=TritonOptions.trt_workspace_bytes,
        help="with --tensorrt: max_workspace_size_bytes (default: %(default)s, the backend's own)",
    )
    parser.add_argument(
        "--warmup-size", type=int, default=TritonOptions.warmup_size,
        help="the front ends' DENOISE_TILE_SIZE (default: %(default)s): the warm-up samples are "
        "full tiles of it",
    )
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse combinations Triton would take but not honour."""
    if args.max_batch < 1 or args.instances < 1 or args.queue_delay_us < 0:
        parser.error("--max-batch and --instances must be >= 1, --queue-delay-us >= 0")
    low, high = TILE_SIZE_RANGE
    if not low <= args.warmup_size <= high:
        parser.error(f"--warmup-size must be between {low} and {high}, as DENOISE_TILE_SIZE")
    if args.tensorrt and args.instance_kind == "cpu":
        parser.error("--tensorrt needs GPU instances: Triton ignores a GPU accelerator on KIND_CPU")
    if args.fp16 and not args.tensorrt:
        parser.error("--fp16 applies to TensorRT engines: add --tensorrt")
    if args.trt_workspace_bytes < 1:
        parser.error("--trt-workspace-bytes must be >= 1")
    if not args.trt_cache.startswith("/"):
        # Relative to Triton's working directory, which nobody controls in a container.
        parser.error("--trt-cache must be an absolute path in the Triton container")


def options_from(argv: list[str] | None) -> tuple[argparse.Namespace, TritonOptions]:
    parser = _parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    options = TritonOptions(
        max_batch_size=args.max_batch,
        max_queue_delay_us=args.queue_delay_us,
        instance_kind=f"KIND_{args.instance_kind.upper()}",
        instances=args.instances,
        tensorrt=args.tensorrt,
        fp16=args.fp16,
        trt_cache=args.trt_cache,
        trt_workspace_bytes=args.trt_workspace_bytes,
        warmup_size=args.warmup_size,
    )
    return args, options


def main(argv: list[str] | None = None) -> int:
    args, options = options_from(argv)
    try:
        written = export_repository(args.models_dir, args.out, options)
    except ExportError as error:
        print(f"denoise-triton-export: {error}", file=sys.stderr)
        return 1
    for target in written:
        print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
