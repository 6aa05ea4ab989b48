"""The GPU image's runtime: onnxruntime-gpu built for the base image's CUDA major, and locked."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "deploy" / "gpu"


def base_image_cuda_major() -> int:
    match = re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:(\d+)\.\d+", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert match, "the Dockerfile names no nvidia/cuda base image"
    return int(match.group(1))


def wheel_cuda_majors(requires_dist: list[str]) -> set[int]:
    """The CUDA majors of the NVIDIA runtime packages the wheel asks for (nvidia-cuda-runtime-cu12)."""
    return {int(m.group(1)) for r in requires_dist if (m := re.match(r"nvidia-cuda-runtime-cu(\d+)", r))}


def test_the_pinned_gpu_runtime_is_built_for_the_base_images_cuda() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (pin,) = extras["gpu"]
    assert re.fullmatch(r"onnxruntime-gpu==[\d.]+", pin), f"the gpu extra must pin one release, not {pin!r}"
    record = json.loads((LOCK / "onnxruntime-gpu.json").read_text())
    assert pin == f"onnxruntime-gpu=={record['version']}", "rerun scripts/lock_gpu.py after changing the pin"
    assert wheel_cuda_majors(record["requires_dist"]) == {base_image_cuda_major()}


def test_every_package_of_the_gpu_image_is_locked() -> None:
    lines = [line for line in (LOCK / "constraints.txt").read_text().splitlines() if line and line[0] != "#"]
    pins = dict(line.split("==") for line in lines)
    assert all(re.fullmatch(r"[\d.a-z+]+", version) for version in pins.values())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)  # type: ignore[union-attr]
        assert re.sub(r"[-_.]+", "-", name).lower() in pins, f"{name} is not locked"
    assert pins["onnxruntime-gpu"] == json.loads((LOCK / "onnxruntime-gpu.json").read_text())["version"]
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "--constraint /tmp/constraints.txt" in dockerfile and "source=deploy/gpu/constraints.txt" in dockerfile
    assert "!deploy/gpu/constraints.txt" in (REPO / ".dockerignore").read_text()


def test_a_cuda_mismatch_would_be_caught() -> None:
    """The check itself: a CUDA 13 wheel's requirements against this CUDA 12 image."""
    cuda13 = ['nvidia-cuda-runtime-cu13~=13.0; extra == "cuda"']
    assert wheel_cuda_majors(cuda13) == {13} != {base_image_cuda_major()}
