"""Export the served models as a Triton model repository, for Triton Inference Server or KServe.

``denoise-triton-export --out triton-models`` (or ``python -m app.tools.triton_export``) writes,
for every model under the models folder whose ONNX file matches its card's checksum::

    <out>/<model_id>/config.pbtxt     ONNX Runtime backend, dynamic batching, tensors from the card
    <out>/<model_id>/1/model.onnx     the committed file, byte for byte
    <out>/<model_id>/card.json        the card, for the normalisation a client must apply

Triton serves the bare model, like this service's ``/v2`` endpoints: FP32 [N, 1, H, W] in the
model's [0, 1] range after the card's normalisation, H and W multiples of the card's
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
from app.settings import DEFAULT_MODELS_DIR

MODEL_VERSION = "1"
CONFIG_FILENAME = "config.pbtxt"


@dataclass(frozen=True)
class TritonOptions:
    max_batch_size: int = 16
    max_queue_delay_us: int = 2000
    instance_kind: str = "KIND_GPU"  # or KIND_CPU
    instances: int = 1
    tensorrt: bool = False  # ask ORT for its TensorRT accelerator, FP16


def _quote(text: str) -> str:
    return json.dumps(text)  # protobuf text format accepts JSON's string escapes


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
        "dynamic_batching {",
        f"  max_queue_delay_microseconds: {options.max_queue_delay_us}",
        "}",
        f"instance_group [ {{ kind: {options.instance_kind} count: {options.instances} }} ]",
        f"version_policy: {{ specific: {{ versions: [ {MODEL_VERSION} ] }} }}",
    ]
    if options.tensorrt:
        lines += [
            "optimization { execution_accelerators { gpu_execution_accelerator [",
            '  { name: "tensorrt" parameters { key: "precision_mode" value: "FP16" } }',
            "] } }",
        ]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="denoise-triton-export",
        description="Write the models as a Triton model repository (ONNX Runtime backend, dynamic batching).",
    )
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR, help="default: %(default)s")
    parser.add_argument("--out", type=Path, required=True, help="the model repository to write")
    parser.add_argument("--max-batch-size", type=int, default=TritonOptions.max_batch_size)
    parser.add_argument("--max-queue-delay-us", type=int, default=TritonOptions.max_queue_delay_us)
    parser.add_argument("--instance-kind", choices=("gpu", "cpu"), default="gpu")
    parser.add_argument(
        "--instances", type=int, default=TritonOptions.instances, help="per GPU (or in all, CPU)"
    )
    parser.add_argument("--tensorrt", action="store_true", help="use ORT's TensorRT accelerator in FP16")
    args = parser.parse_args(argv)
    if args.max_batch_size < 1 or args.max_queue_delay_us < 0 or args.instances < 1:
        parser.error("--max-batch-size and --instances must be >= 1, --max-queue-delay-us >= 0")
    options = TritonOptions(
        max_batch_size=args.max_batch_size,
        max_queue_delay_us=args.max_queue_delay_us,
        instance_kind=f"KIND_{args.instance_kind.upper()}",
        instances=args.instances,
        tensorrt=args.tensorrt,
    )
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
