"""Row-block arithmetic gives the whole-image chain's numbers, whatever the shape."""

from __future__ import annotations

import numpy as np
import pytest

from app import blocks
from app.blocks import in_row_blocks


def chain(values: np.ndarray) -> np.ndarray:
    out = np.subtract(values, -1024.0, dtype=np.float64)
    out /= 0.37
    np.rint(out, out=out)
    return np.clip(out, -3000, 3000, out=out)


@pytest.mark.parametrize("shape", [(7,), (37, 31), (1, 512, 512), (3, 700, 5), (2, 3, 40, 9000), (0, 4)])
@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.float32])
def test_blocks_equal_the_whole_image(shape: tuple[int, ...], dtype: type) -> None:
    values = np.random.default_rng(sum(shape)).normal(0, 900, shape)
    expected = chain(values).astype(dtype)
    result = in_row_blocks(values, dtype, chain)
    assert result.dtype == expected.dtype and result.shape == expected.shape
    np.testing.assert_array_equal(result, expected)


def test_a_view_is_read_as_it_is_and_left_alone() -> None:
    base = np.random.default_rng(5).normal(0, 900, (300, 400))
    view = base[::3, 7:301]
    before = view.copy()
    np.testing.assert_array_equal(in_row_blocks(view, np.int16, chain), chain(view).astype(np.int16))
    np.testing.assert_array_equal(view, before)


def test_many_blocks_are_used_for_an_image(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    def counting(block: np.ndarray) -> np.ndarray:
        seen.append(block.shape[0])
        return chain(block)

    monkeypatch.setattr(blocks, "BLOCK_BYTES", 8 * 512 * 10)
    in_row_blocks(np.zeros((1, 512, 512)), np.int16, counting)
    assert seen == [10] * 51 + [2]
