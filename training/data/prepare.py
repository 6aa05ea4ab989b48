"""Turn the sources into prepared slices with a provenance manifest, in a cache outside the repo.

Layout of ``<cache>/prepared`` (or the fixture folder)::

    manifest.json                         one record per volume: package, version, file, checksum,
                                          slice indices, split, units; and its own hash
    <modality>/<volume_id>.npy            (S, H, W) float32 in native units (HU for CT)
    ct/<volume_id>.noise.npy              (S, K, H, W) float16: K projection-domain noise
                                          realisations (HU) at the reference flux, training volumes only

CT noise is costly to simulate (a Radon transform and a filtered back-projection per slice), so
it is simulated here once, at a reference flux, and rescaled per training step to the sampled
dose: at the counts involved, reconstructed noise scales as 1 / sqrt(I0).
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from training.data.sources import SourceSpec
from training.noise_models import CALIBRATION_FLUX, noise_model_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NoiseFieldTask:
    modality: str
    clean: np.ndarray
    pixel_mm: float
    seed: int


def _simulate_reference_noise(task: NoiseFieldTask) -> tuple[np.ndarray, float]:
    return noise_model_for(task.modality).reference_fields(task.clean, task.pixel_mm, task.seed)


def stable_seed(*parts: object) -> int:
    """A seed from names and numbers, the same in every process (unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


def manifest_hash(records: list[dict[str, Any]]) -> str:
    canonical = json.dumps(records, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


def prepare(sources: list[SourceSpec], cache: Path, out: Path, workers: int = 2,
            simulate_ct_noise: bool = True) -> dict[str, Any]:
    """Fetch, read and store every source; returns the manifest (also written to ``out``)."""
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    for spec in sources:
        for volume in spec.load(cache):
            slices = volume.slices
            indices = volume.slice_indices
            noise_model = noise_model_for(volume.modality)
            slices, keep = noise_model.prepare_slices(slices)
            indices = [indices[i] for i in keep] if indices else indices
            folder = out / volume.modality
            folder.mkdir(exist_ok=True)
            np.save(folder / f"{volume.volume_id}.npy", slices.astype(np.float32))
            record: dict[str, Any] = {
                "volume_id": volume.volume_id, "source": spec.name, "modality": volume.modality,
                "split": spec.split, "package": volume.package, "package_version": volume.package_version,
                "file": volume.file, "file_sha256": volume.file_sha256, "units": volume.units,
                "description": volume.description, "slice_indices": indices,
                "shape": list(slices.shape), "pixel_spacing_mm": volume.pixel_spacing_mm,
            }
            if noise_model.precomputed_fields and spec.split == "train" and simulate_ct_noise:
                pixel_mm = (volume.pixel_spacing_mm or (1.0, 1.0))[0]
                tasks = [NoiseFieldTask(volume.modality, s, pixel_mm, seed=stable_seed(volume.volume_id, i))
                         for i, s in enumerate(slices)]
                log.info("simulating %s noise for %s (%d slices)", noise_model.name, volume.volume_id, len(tasks))
                with ProcessPoolExecutor(max_workers=workers) as pool:
                    results = list(pool.map(_simulate_reference_noise, tasks, chunksize=2))
                np.save(folder / f"{volume.volume_id}.noise.npy", np.stack([r[0] for r in results]))
                record["reference_flux"] = CALIBRATION_FLUX
                record["noise_hu_at_reference_flux"] = [round(r[1], 3) for r in results]
            records.append(record)
            log.info("prepared %s: %s %s", volume.volume_id, spec.split, slices.shape)
    previous = out / "manifest.json"
    if previous.exists():
        # Preparing some modalities again keeps the others' records (and their files).
        redone = {s.modality for s in sources}
        records = [r for r in load_manifest(out)["volumes"] if r["modality"] not in redone] + records
    manifest = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "volumes": records,
        "sha256": manifest_hash(records),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def load_manifest(prepared: Path) -> dict[str, Any]:
    return json.loads((prepared / "manifest.json").read_text())
