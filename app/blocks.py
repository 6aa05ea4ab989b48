"""Element-wise float64 arithmetic on an image, a block of rows at a time.

A chain of numpy operations on a whole 512 x 512 float64 image makes each step a pass over 2 MB
of memory, and the arrays of a request are cold by the time it runs. Done a block of rows at a
time, the float64 temporaries of each block stay in a core's cache and only the input and the
result travel to and from memory, which makes the inverse modality LUT and the normalisation for
the model faster, most of all on large images (docs/BENCHMARKS.md, "Tuning decisions", row
blocks). The numbers are the same as the whole-image chain's: every step is element-wise, and the
result is converted to its type as ``astype`` converts it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

# A block's float64 temporaries: half a core's L2 cache on the benchmark machine (512 KB); smaller
# blocks measured slower than the whole image, larger ones no faster (docs/BENCHMARKS.md, "Tuning
# decisions", row blocks).
BLOCK_BYTES = 256 * 1024


def in_row_blocks(
    values: np.ndarray, dtype: np.dtype[Any] | type, compute: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """``compute(values).astype(dtype)``, computed a block of rows at a time.

    ``compute`` must be element-wise (the value at each position depends only on the input's
    value there) and return an array of its input's shape, which it may make and change freely.
    """
    out = np.empty(values.shape, dtype)
    if values.ndim < 2 or values.size == 0:
        out[...] = compute(values)
        return out
    rows = values.reshape(-1, values.shape[-1])
    rows_out = out.reshape(rows.shape)
    step = max(1, BLOCK_BYTES // (8 * rows.shape[1]))
    for start in range(0, rows.shape[0], step):
        rows_out[start : start + step] = compute(rows[start : start + step])
    return out
