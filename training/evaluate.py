"""Evaluate the committed models: ``python -m training.evaluate``.

The benchmark on unseen sources (``training/benchmark.py``): every method against every model of
each modality, on noisy images from a package no model of that modality saw, for the physics
noise and white Gaussian noise at several levels. Writes ``docs/EVALUATION.md`` and
``docs/evaluation.json`` (``training/report.py``) and the test metrics into each model card.

``--variant unet-int8`` instead scores each reduced-precision variant against its fp32 model
(``training/variants.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from app.modality import modality_names
from training.benchmark import evaluate_modality, verdict
from training.report import update_cards, write_markdown
from training.variants import evaluate_variants


def main(argv: list[str] | None = None) -> None:
    from training.data.__main__ import default_cache

    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__)
    parser.add_argument("--modality", action="append", choices=modality_names())
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--prepared", type=Path, default=default_cache() / "prepared")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--slices", type=int, default=4, help="test slices per volume")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", action="append", default=[], help="classical methods to leave out")
    parser.add_argument("--no-card-update", action="store_true")
    parser.add_argument("--variant", help="instead: score models/<modality>/VARIANT (e.g. unet-int8) against "
                                          "its fp32 model, writing only the variant's card")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per model, with --variant")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    command = "python -m training.evaluate" + "".join(f" --modality {m}" for m in args.modality or [])
    if args.slices != 4 or args.crop != 256:
        command += f" --slices {args.slices} --crop {args.crop}"
    if args.variant:
        evaluate_variants(args, command + f" --variant {args.variant}")
        return
    results = []
    for modality in args.modality or modality_names():
        result = evaluate_modality(modality, args.models, args.prepared, args.slices, args.crop, args.threads,
                                   set(args.skip))
        result["verdict"] = verdict(result)
        results.append(result)
        if not args.no_card_update:
            update_cards(result, command)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if not args.modality else "-" + "-".join(args.modality)
    (args.out / f"evaluation{suffix}.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, args.out / f"EVALUATION{suffix}.md", command)
    for result in results:
        print(result["modality"], json.dumps(result["verdict"]))


if __name__ == "__main__":
    main()
