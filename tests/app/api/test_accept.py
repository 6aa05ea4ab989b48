"""app.api.accept: the transfer syntax a client's Accept header asks of a DICOM answer.

``dicom_transfer_syntax`` reads the first DICOM media range (``application/dicom`` or
``multipart/related; type="application/dicom"``): its ``transfer-syntax`` parameter, quoted or not,
parameter names in any case; ``*``, no parameter or no DICOM range at all give None (the default).
"""

from __future__ import annotations

import pytest

from app.api.accept import dicom_transfer_syntax

JPEG_LS = "1.2.840.10008.1.2.4.80"
RLE = "1.2.840.10008.1.2.5"


@pytest.mark.parametrize("accept", [None, "", "   "])
def test_no_header_asks_for_nothing(accept: str | None) -> None:
    assert dicom_transfer_syntax(accept) is None


def test_a_single_dicom_range_gives_its_syntax() -> None:
    assert dicom_transfer_syntax(f"application/dicom; transfer-syntax={JPEG_LS}") == JPEG_LS


def test_a_quoted_syntax_is_unquoted() -> None:
    assert dicom_transfer_syntax(f'application/dicom; transfer-syntax="{RLE}"') == RLE


def test_spaces_around_the_parameter_are_ignored() -> None:
    assert dicom_transfer_syntax(f"application/dicom ;  transfer-syntax = {RLE} ") == RLE


def test_media_type_and_parameter_names_are_case_insensitive() -> None:
    assert dicom_transfer_syntax(f"Application/DICOM; Transfer-Syntax={JPEG_LS}") == JPEG_LS


def test_other_parameters_such_as_q_do_not_hide_the_syntax() -> None:
    assert dicom_transfer_syntax(f"application/dicom; q=0.9; transfer-syntax={RLE}") == RLE


@pytest.mark.parametrize("accept", ["application/dicom; transfer-syntax=*", 'application/dicom; transfer-syntax="*"'])
def test_a_star_means_any_syntax(accept: str) -> None:
    assert dicom_transfer_syntax(accept) is None


def test_a_dicom_range_without_a_syntax_gives_none() -> None:
    assert dicom_transfer_syntax("application/dicom") is None


def test_multipart_related_of_dicom_gives_its_syntax() -> None:
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_LS}'
    assert dicom_transfer_syntax(accept) == JPEG_LS


def test_multipart_related_type_is_case_insensitive_and_may_be_unquoted() -> None:
    accept = f"Multipart/Related; TYPE=Application/Dicom; transfer-syntax={RLE}"
    assert dicom_transfer_syntax(accept) == RLE


@pytest.mark.parametrize(
    "accept",
    [
        f"multipart/related; transfer-syntax={RLE}",  # no type: not a DICOM range
        f'multipart/related; type="application/dicom+json"; transfer-syntax={RLE}',
        f"application/dicom+json; transfer-syntax={RLE}",
        f"image/png; transfer-syntax={RLE}",
    ],
)
def test_ranges_that_are_not_dicom_are_ignored(accept: str) -> None:
    assert dicom_transfer_syntax(accept) is None


def test_no_dicom_range_among_several_gives_none() -> None:
    assert dicom_transfer_syntax("image/png, application/json;q=0.5, */*;q=0.1") is None


def test_the_dicom_range_is_found_after_other_ranges() -> None:
    assert dicom_transfer_syntax(f"image/png, application/dicom; transfer-syntax={RLE}, */*") == RLE


def test_the_first_dicom_range_decides() -> None:
    accept = f"application/dicom; transfer-syntax={JPEG_LS}, application/dicom; transfer-syntax={RLE}"
    assert dicom_transfer_syntax(accept) == JPEG_LS
    # The first DICOM range names no syntax: the default, even though a later one names one.
    assert dicom_transfer_syntax(f"application/dicom, application/dicom; transfer-syntax={RLE}") is None


def test_a_range_with_q_zero_is_not_a_request() -> None:
    assert dicom_transfer_syntax("application/dicom; transfer-syntax=1.2.840.10008.1.2.4.50; q=0") is None
