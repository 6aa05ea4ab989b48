"""client.inputs, directly: sniffing a file's kind, telling a finished output from a partial one,
the folder files named alone mirror from, the jobs found under folders, and the output clashes
``output_conflicts`` names. tests/client/test_batch.py covers the same rules through ``main``."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.inputs import (
    DICOM_MAGIC_AT,
    PNG_END,
    PNG_SIGNATURE,
    Job,
    common_folder,
    find_jobs,
    image_kind,
    is_complete,
    output_conflicts,
)

PNG = PNG_SIGNATURE + b"\x00\x00\x00\x0dIHDR" + bytes(17) + b"\x00\x00\x00\x00" + PNG_END
DICOM = bytes(DICOM_MAGIC_AT) + b"DICM" + b"\x02\x00\x10\x00"


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- image_kind and is_complete ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (PNG, "png"),
        (PNG_SIGNATURE, "png"),
        (DICOM, "dicom"),
        (DICOM[: DICOM_MAGIC_AT + 4], "dicom"),
        (b"DICM" + bytes(200), None),  # the magic must sit after the 128-byte preamble
        (bytes(DICOM_MAGIC_AT) + b"DIC", None),
        (b"not an image", None),
        (b"", None),
        (b"\x89PNG\r\n", None),  # a truncated signature
    ],
)
def test_image_kind_is_sniffed_from_the_first_bytes(head: bytes, kind: str | None) -> None:
    assert image_kind(head) == kind


def test_a_png_ending_with_iend_is_complete(tmp_path: Path) -> None:
    assert is_complete(write(tmp_path / "a.png", PNG))


def test_a_png_cut_short_is_not_complete(tmp_path: Path) -> None:
    assert not is_complete(write(tmp_path / "a.png", PNG[:-3]))


def test_a_dicom_file_is_complete_by_its_magic(tmp_path: Path) -> None:
    assert is_complete(write(tmp_path / "IM0001", DICOM))


@pytest.mark.parametrize("data", [b"", b"text", DICOM[:100]])
def test_anything_else_is_redone(tmp_path: Path, data: bytes) -> None:
    assert not is_complete(write(tmp_path / "x.png", data))


def test_a_missing_output_is_not_complete(tmp_path: Path) -> None:
    assert not is_complete(tmp_path / "missing.png")


# --- common_folder -------------------------------------------------------------------------------


def test_no_files_have_no_common_folder() -> None:
    assert common_folder([]) is None


def test_one_file_mirrors_from_its_own_folder(tmp_path: Path) -> None:
    assert common_folder([tmp_path / "a" / "x.png"]) == tmp_path / "a"


def test_the_common_folder_is_the_deepest_holding_them_all(tmp_path: Path) -> None:
    files = [tmp_path / "in" / "a" / "x.png", tmp_path / "in" / "a" / "deep" / "y.png", tmp_path / "in" / "b" / "z.png"]
    assert common_folder(files) == tmp_path / "in"
    assert common_folder(files[:2]) == tmp_path / "in" / "a"


def test_relative_paths_are_taken_from_the_working_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert common_folder([Path("a/x.png"), Path("a/b/y.png")]) == tmp_path / "a"


# --- find_jobs -----------------------------------------------------------------------------------


def test_a_folder_s_images_mirror_its_tree_in_sorted_order(tmp_path: Path) -> None:
    root = tmp_path / "in"
    write(root / "b" / "2.png", PNG)
    write(root / "b" / "1.png", PNG)
    write(root / "a" / "IM0001", DICOM)  # no suffix: sniffed
    write(root / "top.png", PNG)
    out = tmp_path / "out"
    jobs = find_jobs([root], out)
    assert [(job.source, job.target) for job in jobs] == [
        (root / "top.png", out.resolve() / "top.png"),
        (root / "a" / "IM0001", out.resolve() / "a" / "IM0001"),
        (root / "b" / "1.png", out.resolve() / "b" / "1.png"),
        (root / "b" / "2.png", out.resolve() / "b" / "2.png"),
    ]


def test_files_that_are_not_images_and_partial_outputs_are_left_out(tmp_path: Path) -> None:
    root = tmp_path / "in"
    write(root / "notes.png", b"a text file named like an image")
    write(root / "x.png.part", PNG)  # a half-written output of an earlier run
    write(root / "readme.txt", b"text")
    write(root / "kept.png", PNG)
    assert [job.source.name for job in find_jobs([root], tmp_path / "out")] == ["kept.png"]


def test_a_file_named_alone_and_inside_a_named_folder_is_sent_once(tmp_path: Path) -> None:
    root = tmp_path / "in"
    alone = write(root / "sub" / "x.png", PNG)
    out = tmp_path / "out"
    jobs = find_jobs([alone, root], out)
    assert [(job.source, job.target) for job in jobs] == [(alone, out.resolve() / "x.png")]  # its first output


def test_a_named_file_that_is_not_an_image_is_skipped(tmp_path: Path) -> None:
    text = write(tmp_path / "in" / "list.txt", b"a.png\n")
    assert find_jobs([text], tmp_path / "out") == []


def test_a_missing_input_gives_no_jobs(tmp_path: Path) -> None:
    assert find_jobs([tmp_path / "missing.png"], tmp_path / "out") == []


# --- output_conflicts ----------------------------------------------------------------------------


def jobs_to(out: Path, *pairs: tuple[str, str]) -> list[Job]:
    return [Job(Path(source), out / target) for source, target in pairs]


def test_distinct_outputs_have_no_conflicts(tmp_path: Path) -> None:
    jobs = jobs_to(tmp_path, ("r1/a.png", "a.png"), ("r2/b.png", "b.png"), ("r2/x/c.png", "x/c.png"))
    assert output_conflicts(jobs) == []
    assert output_conflicts(jobs, tmp_path / "denoise-report.csv") == []


def test_two_inputs_on_one_output_are_named_both(tmp_path: Path) -> None:
    jobs = jobs_to(tmp_path, ("r1/a.png", "a.png"), ("r2/a.png", "a.png"))
    assert output_conflicts(jobs) == [f"r1/a.png and r2/a.png would both be written to {tmp_path / 'a.png'}"]


def test_outputs_differing_only_in_case_clash(tmp_path: Path) -> None:
    jobs = jobs_to(tmp_path, ("r1/A.png", "A.png"), ("r2/a.png", "a.png"))
    (clash,) = output_conflicts(jobs)
    assert "r1/A.png and r2/a.png would both be written to" in clash


@pytest.mark.parametrize("file_first", [True, False])
def test_an_output_another_needs_as_its_folder_clashes(tmp_path: Path, file_first: bool) -> None:
    pairs = [("r1/x", "x"), ("r2/x/y.png", "x/y.png")]
    jobs = jobs_to(tmp_path, *(pairs if file_first else pairs[::-1]))
    assert output_conflicts(jobs) == [f"r1/x would be written to {tmp_path / 'x'}, the folder r2/x/y.png needs"]


def test_an_output_deeper_than_one_level_still_clashes_with_a_file(tmp_path: Path) -> None:
    jobs = jobs_to(tmp_path, ("r1/x", "x"), ("r2/x/y/z.png", "x/y/z.png"))
    assert len(output_conflicts(jobs)) == 1


def test_an_output_on_the_report_names_the_report(tmp_path: Path) -> None:
    report = tmp_path / "denoise-report.csv"
    jobs = jobs_to(tmp_path, ("r1/a.png", "a.png"), ("r1/denoise-report.csv", "denoise-report.csv"))
    assert output_conflicts(jobs, report) == [f"r1/denoise-report.csv would be written to the report {report}"]


def test_the_report_is_compared_by_its_resolved_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    jobs = jobs_to(tmp_path.resolve(), ("r1/report.csv", "report.csv"))
    assert len(output_conflicts(jobs, Path("report.csv"))) == 1
    assert output_conflicts(jobs, Path("other.csv")) == []


def test_every_clash_is_listed(tmp_path: Path) -> None:
    jobs = jobs_to(tmp_path, ("r1/a.png", "a.png"), ("r2/a.png", "a.png"), ("r3/a.png", "a.png"))
    assert output_conflicts(jobs) == [
        f"r1/a.png and r2/a.png would both be written to {tmp_path / 'a.png'}",
        f"r1/a.png and r3/a.png would both be written to {tmp_path / 'a.png'}",
    ]
