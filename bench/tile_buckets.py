"""Tile buckets against exact tile sizes, with the committed models on this machine's CPU.

    python -m bench.tile_buckets                  # shapes, 3 throughput rounds, quality
    python -m bench.tile_buckets --rounds 1 --no-quality

Three measurements, each of exact sizes (DENOISE_TILE_BUCKETS=off, the CPU default) and of
buckets (256 and 512, what 'auto' gives a GPU or an inference backend):

* shapes: the distinct model input shapes over 20 common image sizes (256 to 3000 a side), and
  the pixels the model computes per image pixel;
* throughput: 4 threads denoising a mix of image sizes through one model's micro-batcher and the
  CPU lanes (the pipeline's engine, no HTTP), rounds alternating between the two, images a
  second and the ratio;
* quality: the unseen-source evaluation images of each modality at its default physics level
  (from the training tools' prepared data), cut to 219 x 237 so that the 256 bucket pads both far
  borders, PSNR of each against the clean image, and the largest difference between the two
  outputs.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from app.inference.engine import Denoiser, PhaseTimer
from app.inference.registry import load_registry
from app.inference.tiling import TilePlan, run_tiled
from app.pipeline import DenoisePipeline
from app.settings import Settings

REPO = Path(__file__).resolve().parents[1]
# 256 to 3000 pixels a side: CT and MR slices, CR / DX detectors, mammography, odd crops.
COMMON_SIZES = [(256, 256), (320, 320), (384, 384), (400, 300), (448, 448), (512, 512), (640, 480),
                (768, 768), (1024, 1024), (1088, 1088), (1200, 1600), (1500, 1500), (2048, 2048),
                (2048, 2500), (2000, 2500), (2140, 1760), (2336, 2836), (2500, 3000), (2880, 2880),
                (3000, 3000)]
# What the load mixes: slices and small radiographs, each size as often.
MIXED_SIZES = [(256, 256), (320, 320), (400, 300), (448, 448), (512, 512), (640, 480), (768, 768), (1024, 1024)]
MODES = {"exact": "off", "buckets": "256"}
ODD_CROP = (219, 237)


def settings_for(mode: str, models: Path, providers: str = "auto") -> Settings:
    return Settings(models_dir=models, tile_buckets=MODES[mode], providers=providers)


def shapes_and_work(plan: TilePlan) -> tuple[int, float]:
    """Distinct input shapes over COMMON_SIZES, and pixels computed per image pixel."""
    shapes: set[tuple[int, int]] = set()
    computed = 0

    def record(batch: np.ndarray) -> np.ndarray:
        nonlocal computed
        shapes.add(batch.shape[2:])
        computed += batch.shape[0] * batch.shape[2] * batch.shape[3]
        return batch[:, :1]

    for rows, cols in COMMON_SIZES:
        run_tiled(np.zeros((rows, cols), np.float32), record, plan)
    return len(shapes), computed / sum(r * c for r, c in COMMON_SIZES)


def throughput(denoiser: Denoiser, images: list[np.ndarray], clients: int) -> float:
    """Images a second with ``clients`` threads, each denoising every image once, offset."""
    def client(offset: int) -> None:
        for index in range(len(images)):
            image = images[(index + offset) % len(images)]
            with denoiser.batcher.expect() as ticket:
                denoiser.denoise_with_level(image, PhaseTimer(), ticket)

    threads = [threading.Thread(target=client, args=(n * len(images) // clients,)) for n in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return clients * len(images) / (time.perf_counter() - started)


def quality(models: Path, prepared: Path) -> None:
    from app.quality.reference import psnr
    from training.benchmark import config_from_card, held_out_images

    registry = load_registry(settings_for("exact", models))
    for model in registry.models.values():
        card = model.card
        if not card.default:
            continue
        config = config_from_card(card, 256)
        # Cut to a size no bucket fits, so the 256 bucket pads both far borders.
        images = [replace(image, clean=image.clean[:ODD_CROP[0], :ODD_CROP[1]], noisy=image.noisy[:ODD_CROP[0], :ODD_CROP[1]])
                  for image in held_out_images(prepared, config, card.noise_model.default_level, slices=4)]
        outputs = {}
        for mode in MODES:
            denoiser = Denoiser(model, settings_for(mode, models))
            outputs[mode] = [denoiser.denoise(image.noisy[np.newaxis], PhaseTimer())[0] for image in images]
            denoiser.close()
        scores = {mode: statistics.mean(psnr(image.clean, out, float(np.ptp(image.clean)))
                                        for image, out in zip(images, outputs[mode], strict=True))
                  for mode in MODES}
        widest = max(float(np.max(np.abs(a - b)) / np.ptp(image.clean))
                     for image, a, b in zip(images, outputs["exact"], outputs["buckets"], strict=True))
        sizes = sorted({image.noisy.shape for image in images})
        print(f"{card.id}: {len(images)} images {sizes}: PSNR exact {scores['exact']:.3f} dB, buckets "
              f"{scores['buckets']:.3f} dB ({scores['buckets'] - scores['exact']:+.3f}); largest difference "
              f"{widest:.2e} of the clean range", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tile_buckets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--model", default="ct-unet")
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--prepared", type=Path, default=Path.home() / ".cache" / "medical-denoise" / "prepared")
    parser.add_argument("--no-quality", action="store_true")
    parser.add_argument("--providers", default="auto",
                        help="as DENOISE_PROVIDERS, e.g. cuda,cpu on a GPU (bench/gpu_check.sh)")
    args = parser.parse_args(argv)

    settings = {mode: settings_for(mode, args.models, args.providers) for mode in MODES}
    pipelines = {mode: DenoisePipeline(load_registry(settings[mode]), settings[mode]) for mode in MODES}
    denoisers = {mode: pipeline.denoisers[args.model] for mode, pipeline in pipelines.items()}
    print(f"{args.model} runs on {denoisers['exact'].model.execution_provider}", flush=True)
    for mode, denoiser in denoisers.items():
        count, work = shapes_and_work(denoiser.plan)
        print(f"{mode}: {count} input shapes over {len(COMMON_SIZES)} common sizes, "
              f"{work:.3f} pixels computed per image pixel", flush=True)
    rng = np.random.default_rng(0)
    images = [rng.normal(40, 30, (1, rows, cols)) for rows, cols in MIXED_SIZES]
    for denoiser in denoisers.values():  # warm: first calls of each shape
        throughput(denoiser, images, 1)
    ratios = []
    for round_number in range(1, args.rounds + 1):
        order = list(MODES) if round_number % 2 else list(MODES)[::-1]
        rates = {mode: throughput(denoisers[mode], images, args.clients) for mode in order}
        ratios.append(rates["buckets"] / rates["exact"])
        print(f"round {round_number}: {args.clients} clients, mixed sizes: exact {rates['exact']:.2f} images/s, "
              f"buckets {rates['buckets']:.2f} images/s (ratio {ratios[-1]:.2f})", flush=True)
    if ratios:
        print(f"median ratio buckets / exact: {statistics.median(ratios):.2f}")
    for pipeline in pipelines.values():
        pipeline.close()
    if not args.no_quality:
        if args.prepared.is_dir():
            quality(args.models, args.prepared)
        else:
            print(f"quality skipped: no prepared data at {args.prepared} (python -m training.data prepare)")


if __name__ == "__main__":
    main()
