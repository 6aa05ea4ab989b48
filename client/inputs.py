"""Which files the batch client sends and where each answer is written: standard library only, so
``--dry-run`` and ``--help`` work without the client extra.

The output rule: a folder's files keep their path relative to that folder; files named one by one
(on the command line or in ``--list``) keep their path relative to the deepest folder that holds
them all, so two files of one name from two folders land apart, as their folders.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"
DICOM_MAGIC_AT = 128
PART_SUFFIX = ".part"


def image_kind(head: bytes) -> str | None:
    """``png``, ``dicom`` or None, from a file's first 132 bytes."""
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head[DICOM_MAGIC_AT : DICOM_MAGIC_AT + 4] == b"DICM":
        return "dicom"
    return None


def _head(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(DICOM_MAGIC_AT + 4)
    except OSError:
        return b""


def is_complete(path: Path) -> bool:
    """An output written by this client: renamed from .part once whole, and of a known kind.

    PNG must end with its IEND chunk; DICOM must carry its magic. Anything else is redone.
    """
    try:
        size = path.stat().st_size
    except OSError:
        return False
    kind = image_kind(_head(path))
    if kind == "png":
        with path.open("rb") as handle:
            handle.seek(max(0, size - len(PNG_END)))
            return handle.read() == PNG_END
    return kind == "dicom"


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path


def _walk(root: Path, out: Path) -> Iterator[Path]:
    for folder, subfolders, files in os.walk(root):
        here = Path(folder)
        subfolders[:] = sorted(d for d in subfolders if (here / d).resolve() != out)
        for name in sorted(files):
            if not name.endswith(PART_SUFFIX):
                yield here / name


def _absolute(path: Path) -> Path:
    # abspath, not resolve: a file reached through a linked folder mirrors as the user named it.
    return Path(os.path.abspath(path))


def common_folder(files: list[Path]) -> Path | None:
    """The deepest folder holding every file in ``files`` (None for none): the root they mirror from."""
    if not files:
        return None
    return Path(os.path.commonpath([_absolute(path).parent for path in files]))


def _named_files(inputs: list[Path]) -> dict[Path, Path]:
    """Each image named on its own, with its path relative to the deepest folder holding them all.

    Only the images count: a text file named beside them must not move the root they mirror from.
    """
    images = [given for given in inputs if not given.is_dir() and image_kind(_head(given)) is not None]
    root = common_folder(images)
    return {given: _absolute(given).relative_to(root) for given in images} if root is not None else {}


def _candidates(given: Path, out: Path, named: dict[Path, Path]) -> Iterator[tuple[Path, Path]]:
    """(file, its path relative to its root) for one input: a folder walked, or an image named alone."""
    if given.is_dir():
        yield from ((path, path.relative_to(given)) for path in _walk(given, out))
    elif given in named:
        yield given, named[given]


def find_jobs(inputs: Iterable[Path], out: Path) -> list[Job]:
    """PNG and DICOM files under ``inputs``, each with its mirrored output path under ``out``.

    A file reached twice (named alone and inside a named folder) is sent once, to its first output.
    """
    inputs = list(inputs)
    out = out.resolve()
    named = _named_files(inputs)
    jobs: list[Job] = []
    seen: set[Path] = set()
    for given in inputs:
        for path, relative in _candidates(given, out, named):
            resolved = path.resolve()
            if resolved in seen or image_kind(_head(path)) is None:
                continue
            seen.add(resolved)
            jobs.append(Job(path, out / relative))
    return jobs


def _key(path: Path) -> str:
    # Without case: on a case-insensitive disk (macOS, Windows) A.png and a.png are one file, and
    # the second answer would silently replace the first.
    return os.path.normcase(str(path)).casefold()


def _same_output(jobs: list[Job], by_key: dict[str, Job]) -> Iterator[str]:
    for job in jobs:
        first = by_key.setdefault(_key(job.target), job)
        if first is not job:
            yield f"{first.source} and {job.source} would both be written to {job.target}"


def _file_for_folder(jobs: list[Job], by_key: dict[str, Job]) -> Iterator[str]:
    # out/x from one root and out/x/y.png from another: x cannot be a file and a folder.
    for job in jobs:
        for folder in job.target.parents:
            holder = by_key.get(_key(folder))
            if holder is not None:
                yield f"{holder.source} would be written to {holder.target}, the folder {job.source} needs"


def output_conflicts(jobs: list[Job], report: Path | None = None) -> list[str]:
    """Why the outputs cannot all be written, one sentence per clash naming both inputs; [] when they can.

    Two inputs on one output (two folders named as inputs, each with a file of one name), an
    output that another output needs as its folder, or an output on the report itself.
    """
    by_key: dict[str, Job] = {}
    clashes = list(_same_output(jobs, by_key))
    clashes += _file_for_folder(jobs, by_key)
    on_report = by_key.get(_key(report.resolve())) if report is not None else None
    if on_report is not None:
        clashes.append(f"{on_report.source} would be written to the report {report}")
    return clashes
