"""The unseen-source benchmark's bookkeeping: which methods count as classical."""

from __future__ import annotations


def test_only_known_classical_methods_rank_as_classical() -> None:
    from training.benchmark import BM3D_TRUE_NPS, NOISY_INPUT, _is_classical

    assert _is_classical("bm3d") and _is_classical(BM3D_TRUE_NPS) and _is_classical("gaussian")
    assert not _is_classical("unet (estimated level)") and not _is_classical("drunet")
    assert not _is_classical(NOISY_INPUT)
