"""Lock the GPU image's Python packages: ``.venv/bin/python scripts/lock_gpu.py``.

Resolves the service with the ``gpu`` extra for the GPU image's interpreter (CPython 3.12 on
Ubuntu 24.04, x86_64 manylinux) with pip's resolver, from package metadata only (no wheel is
downloaded), and writes

* ``deploy/gpu/constraints.txt``: every resolved package pinned, which the Dockerfile installs
  with, so two builds of one commit install the same versions;
* ``deploy/gpu/onnxruntime-gpu.json``: the pinned onnxruntime-gpu wheel's file name, hash and
  requirements, from which ``tests/deploy/test_gpu_runtime.py`` reads the CUDA major it was built
  for (its ``nvidia-cuda-runtime-cuNN`` requirement) and holds it to the base image's.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "deploy" / "gpu"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "linux_x86_64")
PYTHON_VERSION = "3.12"  # Ubuntu 24.04's python3, the GPU image's interpreter


def normalised(name: str) -> str:
    """A package name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["gpu"]]


def resolve(wanted: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
             "--target", str(Path(scratch) / "target"), "--report", str(report), "--only-binary=:all:",
             "--python-version", PYTHON_VERSION, "--implementation", "cp",
             *(f"--platform={platform}" for platform in PLATFORMS), *wanted],
            check=True,
        )
        return json.loads(report.read_text())


def main() -> None:
    report = resolve(requirements())
    pins = sorted((normalised(item["metadata"]["name"]), item["metadata"]["version"]) for item in report["install"])
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "constraints.txt").write_text(
        "# Made by scripts/lock_gpu.py for the GPU image (CPython 3.12, x86_64): every package pinned.\n"
        + "".join(f"{name}=={version}\n" for name, version in pins)
    )
    (runtime,) = [item for item in report["install"] if normalised(item["metadata"]["name"]) == "onnxruntime-gpu"]
    url = runtime["download_info"]["url"]
    record = {
        "version": runtime["metadata"]["version"],
        "wheel": url.rsplit("/", 1)[-1],
        "sha256": runtime["download_info"].get("archive_info", {}).get("hashes", {}).get("sha256"),
        "requires_dist": runtime["metadata"].get("requires_dist", []),
    }
    (OUT / "onnxruntime-gpu.json").write_text(json.dumps(record, indent=2) + "\n")
    cuda = sorted({m.group(1) for r in record["requires_dist"] if (m := re.search(r"-cu(\d+)\b", r))})
    print(f"{len(pins)} packages locked; onnxruntime-gpu {record['version']} needs CUDA {', '.join(cuda) or '?'}")


if __name__ == "__main__":
    main()
