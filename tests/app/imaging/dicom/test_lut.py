"""app.imaging.dicom.lut: the modality LUT chosen for each frame, applying it both ways, the name of
its units and MONOCHROME1 inversion, on datasets and arrays built here.

The inverse of a table LUT and of a linear one are already checked in test_read_write.py
(``test_table_lut_inverse_takes_the_nearest_entry``, ``test_linear_lut_inverse_rounds_and_clips``);
this file covers the rest of the module.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from app.imaging.dicom.lut import ModalityLUT, invert_monochrome1, modality_luts, units_name


def lut_sequence_dataset(entries: list[int], first_mapped: int, lut_type: str = "HU") -> Dataset:
    ds = Dataset()
    ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation = 16, 16, 0
    item = Dataset()
    item.LUTDescriptor = [len(entries), first_mapped, 16]
    item.LUTData = entries
    item.ModalityLUTType = lut_type
    ds.ModalityLUTSequence = Sequence([item])
    return ds


def transformation(slope: float, intercept: float, rescale_type: str = "") -> Dataset:
    item = Dataset()
    item.RescaleSlope, item.RescaleIntercept = slope, intercept
    if rescale_type:
        item.RescaleType = rescale_type
    return item


def enhanced(per_frame: list[Dataset | None], shared: Dataset | None) -> Dataset:
    """An enhanced multi-frame header: Pixel Value Transformation per frame (None: absent) and shared."""
    ds = Dataset()
    groups = []
    for item in per_frame:
        group = Dataset()
        if item is not None:
            group.PixelValueTransformationSequence = Sequence([item])
        groups.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(groups)
    shared_group = Dataset()
    if shared is not None:
        shared_group.PixelValueTransformationSequence = Sequence([shared])
    ds.SharedFunctionalGroupsSequence = Sequence([shared_group])
    return ds


# --- ModalityLUT ------------------------------------------------------------------------------


def test_a_linear_lut_applies_slope_and_intercept_in_float64() -> None:
    lut = ModalityLUT(slope=2.0, intercept=-1024.0)
    stored = np.array([[0, 512], [1024, 4095]], dtype=np.uint16)
    units = lut.to_units(stored)
    assert units.dtype == np.float64 and lut.is_linear
    np.testing.assert_array_equal(units, [[-1024.0, 0.0], [1024.0, 7166.0]])


def test_the_identity_lut_converts_without_changing_values() -> None:
    stored = np.array([-5, 0, 7], dtype=np.int16)
    units = ModalityLUT().to_units(stored)
    np.testing.assert_array_equal(units, [-5.0, 0.0, 7.0])
    units[0] = 99  # a new array, never a view of the stored values
    assert stored[0] == -5


def test_a_table_maps_values_before_its_first_entry_and_past_its_last_to_its_ends() -> None:
    lut = ModalityLUT(first_mapped=10, table=np.array([-100.0, 0.0, 50.0]))
    assert not lut.is_linear
    assert lut.to_units(np.array([0, 9, 10, 11, 12, 13, 1000])).tolist() == [-100.0, -100.0, -100.0, 0.0, 50.0, 50.0, 50.0]


def test_a_table_with_a_single_usable_entry_inverts_to_it() -> None:
    lut = ModalityLUT(first_mapped=0, table=np.array([5.0, 7.0, 9.0]))
    stored = lut.to_stored(np.array([-50.0, 6.0, 9.0, 500.0]), 2, 10, np.dtype(np.uint8))
    assert stored.tolist() == [2, 2, 2, 2]  # only input 2 lies in 2..10


def test_a_table_outside_the_stored_range_inverts_to_the_range_end() -> None:
    lut = ModalityLUT(first_mapped=100, table=np.array([1.0, 2.0, 3.0]))
    stored = lut.to_stored(np.array([0.0, 3.0]), 0, 10, np.dtype(np.int16))
    assert stored.dtype == np.int16 and stored.tolist() == [10, 10]


def test_the_units_range_of_a_negative_slope_is_ordered() -> None:
    assert ModalityLUT(slope=-2.0, intercept=100.0).units_range(0, 10) == (80.0, 100.0)


def test_the_units_range_of_a_table_covers_only_the_stored_range() -> None:
    lut = ModalityLUT(first_mapped=0, table=np.array([-1000.0, 0.0, 10.0, 3000.0]))
    assert lut.units_range(1, 2) == (0.0, 10.0)


def test_the_units_range_of_a_wide_stored_range_is_the_whole_table() -> None:
    lut = ModalityLUT(first_mapped=0, table=np.array([-7.0, 3.0, 11.0]))
    assert lut.units_range(-(1 << 20), 1 << 20) == (-7.0, 11.0)


# --- modality_luts ---------------------------------------------------------------------------


def test_a_modality_lut_sequence_applies_to_every_frame_and_wins_over_rescale() -> None:
    ds = lut_sequence_dataset([0, 10, 20, 30], first_mapped=2)
    ds.RescaleSlope, ds.RescaleIntercept = 5, 3
    luts = modality_luts(ds, 3)
    assert len(luts) == 3 and len(set(map(id, luts))) == 1
    assert luts[0].first_mapped == 2 and luts[0].table is not None
    assert luts[0].to_units(np.array([2, 3, 5])).tolist() == [0.0, 10.0, 30.0]


def test_a_descriptor_of_zero_entries_means_65536() -> None:
    ds = lut_sequence_dataset(list(range(65536)), first_mapped=0)
    ds.ModalityLUTSequence[0].LUTDescriptor = [0, 0, 16]
    (lut,) = modality_luts(ds, 1)
    assert lut.table is not None and lut.table.size == 65536 and lut.table[-1] == 65535.0


def test_top_level_rescale_applies_to_every_frame() -> None:
    ds = Dataset()
    ds.RescaleSlope, ds.RescaleIntercept = "2.5", "-1024"
    luts = modality_luts(ds, 2)
    assert luts == (ModalityLUT(slope=2.5, intercept=-1024.0),) * 2


def test_rescale_with_only_an_intercept_keeps_slope_one() -> None:
    ds = Dataset()
    ds.RescaleIntercept = -1000
    assert modality_luts(ds, 1) == (ModalityLUT(slope=1.0, intercept=-1000.0),)


def test_a_top_level_rescale_wins_over_functional_groups() -> None:
    ds = enhanced([transformation(3, 0)], shared=None)
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    assert modality_luts(ds, 1) == (ModalityLUT(intercept=-1024.0),)


def test_per_frame_transformations_come_first_then_the_shared_one() -> None:
    ds = enhanced([transformation(2, 1), None, transformation(4, -3)], shared=transformation(10, 100))
    assert modality_luts(ds, 3) == (
        ModalityLUT(slope=2.0, intercept=1.0),
        ModalityLUT(slope=10.0, intercept=100.0),
        ModalityLUT(slope=4.0, intercept=-3.0),
    )


def test_frames_beyond_the_per_frame_groups_take_the_shared_transformation() -> None:
    ds = enhanced([transformation(2, 1)], shared=transformation(10, 100))
    assert modality_luts(ds, 2)[1] == ModalityLUT(slope=10.0, intercept=100.0)


def test_no_transformation_at_all_is_the_identity() -> None:
    assert modality_luts(Dataset(), 2) == (ModalityLUT(), ModalityLUT())
    assert modality_luts(enhanced([None, None], shared=None), 2) == (ModalityLUT(), ModalityLUT())


# --- units_name ------------------------------------------------------------------------------


def test_rescale_type_names_the_units() -> None:
    ds = Dataset()
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, -1024, "HU"
    assert units_name(ds, "stored value") == "HU"


def test_rescale_type_us_means_unspecified() -> None:
    ds = Dataset()
    ds.RescaleType = "US"
    assert units_name(ds, "stored value") == "unspecified"


def test_no_rescale_type_gives_the_default() -> None:
    assert units_name(Dataset(), "stored value") == "stored value"
    ds = Dataset()
    ds.RescaleType = ""
    assert units_name(ds, "HU") == "HU"


def test_the_modality_lut_type_names_a_table_s_units() -> None:
    assert units_name(lut_sequence_dataset([0, 1], 0, lut_type="OD"), "stored value") == "OD"
    assert units_name(lut_sequence_dataset([0, 1], 0, lut_type="US"), "stored value") == "unspecified"


def test_the_first_frame_s_functional_group_names_the_units() -> None:
    ds = enhanced([transformation(1, 0, "HU")], shared=transformation(1, 0, "OD"))
    assert units_name(ds, "stored value") == "HU"
    assert units_name(enhanced([None], shared=transformation(1, 0, "OD")), "stored value") == "OD"


# --- invert_monochrome1 ----------------------------------------------------------------------


def test_monochrome1_frames_are_mirrored_within_their_own_range() -> None:
    frames = np.array([[[0, 10]], [[100, 150]]], dtype=np.int16)
    out = invert_monochrome1(frames, [(0.0, 10.0), (100.0, 200.0)])
    assert out.dtype == np.float64
    assert out.tolist() == [[[10.0, 0.0]], [[200.0, 150.0]]]


def test_inverting_twice_gives_the_frames_back() -> None:
    frames = np.random.default_rng(0).uniform(-1024, 3071, (3, 4, 5))
    ranges = [(-1024.0, 3071.0), (0.0, 4095.0), (-5.0, 5.0)]
    np.testing.assert_allclose(invert_monochrome1(invert_monochrome1(frames, ranges), ranges), frames)


@pytest.mark.parametrize(("low", "high"), [(0.0, 4095.0), (-1024.0, 3071.0)])
def test_the_range_ends_swap(low: float, high: float) -> None:
    out = invert_monochrome1(np.array([[[low, high]]]), [(low, high)])
    assert out.tolist() == [[[high, low]]]
