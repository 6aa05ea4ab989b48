"""The CPU lanes: a call on every core takes every lane, a one-thread call one; under load the
batcher runs one-thread calls side by side, a lone submission still gets every core, and the
one-thread session answers as the service's own session does."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from app.inference.batcher import MicroBatcher
from app.inference.engine import Denoiser, PhaseTimer
from app.inference.lanes import Lanes
from app.inference.registry import load_registry
from app.settings import Settings
from tests.app.inference.test_batcher import GatedModel, in_daemon_thread, tiles, wait_for


def test_a_call_on_every_lane_waits_for_the_one_lane_calls_and_they_for_it() -> None:
    lanes = Lanes(2)
    assert lanes.try_acquire(1) and not lanes.try_acquire(2)
    wide = in_daemon_thread(lanes.acquire, 2)
    wait_for(lambda: lanes.waiting == 1)
    # The second lane is free, but the call waiting for every lane came first.
    assert not wide.done() and not lanes.try_acquire(1)
    narrow = in_daemon_thread(lanes.acquire, 1)
    wait_for(lambda: lanes.waiting == 2)
    lanes.release(1)
    wide.result(10)
    assert not narrow.done()  # behind the call on every lane
    lanes.release(2)
    narrow.result(10)
    lanes.release(1)
    assert lanes.try_acquire(2)
    assert lanes.free == 0 and not lanes.try_acquire(1)
    lanes.release(2)
    assert lanes.free == 2
    with pytest.raises(RuntimeError):
        lanes.release(1)
    with pytest.raises(ValueError):
        lanes.try_acquire(3)


def test_calls_waiting_for_lanes_are_served_in_the_order_they_came() -> None:
    lanes = Lanes(2)
    assert lanes.try_acquire(2)
    order: list[int] = []

    def take(n: int, count: int) -> None:
        lanes.acquire(count)
        order.append(n)
        lanes.release(count)

    for n, count in enumerate((2, 1, 2, 1, 2, 1)):  # each must end before the next fits
        in_daemon_thread(take, n, count)
        wait_for(lambda: lanes.waiting == n + 1)
    lanes.release(2)
    wait_for(lambda: len(order) == 6 and lanes.free == 2)
    assert order == [0, 1, 2, 3, 4, 5]


class CountingModel(GatedModel):
    """A GatedModel that records how many of its calls ran at once."""

    def __init__(self) -> None:
        super().__init__()
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            return super().__call__(batch)
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture
def laned() -> Iterator[Callable[..., MicroBatcher]]:
    made: list[MicroBatcher] = []

    def make(wide: Callable[[np.ndarray], np.ndarray], narrow: CountingModel, **options: int) -> MicroBatcher:
        batcher = MicroBatcher(
            "laned", wide, max_batch=8, max_delay_s=5.0, max_queue=64,
            execution=Lanes(2), wide_lanes=2, run_narrow=narrow, **options,
        )
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        batcher.close()


def test_under_load_one_core_calls_run_side_by_side_one_submission_each(laned) -> None:  # type: ignore[no-untyped-def]
    wide, narrow = GatedModel(), CountingModel()
    batcher = laned(wide, narrow)
    narrow.gate.clear()
    with batcher.expect(), ThreadPoolExecutor(5) as pool:  # another request on its way: not alone
        waiting = [pool.submit(batcher.submit, tiles(v)) for v in range(5)]
        wait_for(lambda: narrow.running == 2)  # two lanes, two calls at once ...
        wait_for(lambda: batcher.queued_tiles == 3)  # ... the rest queued, no batch window held
        narrow.gate.set()
        results = [f.result(10) for f in waiting]
    assert narrow.most_at_once == 2 and narrow.sizes == [1] * 5 and wide.sizes == []
    outputs = sorted(float(output[0, 0, 0, 0]) for output, _ in results)
    assert outputs == [2.0 * v for v in range(5)]  # each caller its own answer


def test_large_tiles_run_on_every_core_even_under_load(laned) -> None:  # type: ignore[no-untyped-def]
    wide, narrow = CountingModel(), CountingModel()
    batcher = laned(wide, narrow, narrow_max_tile_pixels=8 * 8)
    with batcher.expect(), ThreadPoolExecutor(4) as pool:  # never alone
        small = [pool.submit(batcher.submit, tiles(v)) for v in (1, 2)]
        large = [pool.submit(batcher.submit, tiles(v, size=16)) for v in (3, 4)]
        results = [f.result(10)[0] for f in (*small, *large)]
    assert narrow.sizes == [1, 1] and wide.sizes == [1, 1]
    assert [float(r.flat[0]) for r in results] == [2.0, 4.0, 6.0, 8.0]
    assert wide.most_at_once == 1


def test_with_lanes_a_lone_submission_still_runs_on_every_core(laned) -> None:  # type: ignore[no-untyped-def]
    wide, narrow = GatedModel(), CountingModel()
    batcher = laned(wide, narrow)
    with batcher.expect() as ticket:
        output, _ = batcher.submit(tiles(3, count=2), ticket)
    np.testing.assert_array_equal(output, tiles(6, count=2))
    assert wide.sizes == [2] and narrow.sizes == []


def test_a_call_on_every_core_holds_later_submissions_back_until_it_ends(laned) -> None:  # type: ignore[no-untyped-def]
    wide, narrow = CountingModel(), CountingModel()
    batcher = laned(wide, narrow)
    wide.gate.clear()
    first = in_daemon_thread(batcher.submit, tiles(1))
    assert wide.entered.wait(10)  # alone: every core
    later = in_daemon_thread(batcher.submit, tiles(2))  # not alone now: it queues ...
    wait_for(lambda: batcher.queued_tiles == 1)
    assert not narrow.entered.wait(0.2)  # ... while every lane is taken
    wide.gate.set()
    np.testing.assert_array_equal(first.result(10)[0], tiles(2))
    np.testing.assert_array_equal(later.result(10)[0], tiles(4))
    # Alone again once the first had ended: every core for it too, never two calls at once.
    assert wide.sizes == [1, 1] and narrow.sizes == [] and wide.most_at_once == 1


def test_a_one_core_call_that_fails_fails_only_its_caller(laned) -> None:  # type: ignore[no-untyped-def]
    class FailingOnNegative(CountingModel):
        def __call__(self, batch: np.ndarray) -> np.ndarray:
            if (batch < 0).any():
                raise ValueError("no negative tiles")
            return super().__call__(batch)

    batcher = laned(GatedModel(), FailingOnNegative())
    with batcher.expect(), ThreadPoolExecutor(3) as pool:
        good = [pool.submit(batcher.submit, tiles(v)) for v in (1, 2)]
        bad = pool.submit(batcher.submit, tiles(-1))
        with pytest.raises(ValueError, match="negative"):
            bad.result(10)
        assert sorted(float(f.result(10)[0][0, 0, 0, 0]) for f in good) == [2.0, 4.0]
    assert not batcher.stopped


@pytest.fixture(scope="module")
def laned_registry(models_dir: Path):  # type: ignore[no-untyped-def]
    settings = Settings(models_dir=models_dir, intra_op_threads=2, cpu_lanes=2, tile_size=80, tile_overlap=16)
    return settings, load_registry(settings)


def test_cpu_models_get_a_one_thread_session_only_with_lanes_on(laned_registry, models_dir: Path) -> None:  # type: ignore[no-untyped-def]
    _, registry = laned_registry
    assert all(m.one_thread_session is not None for m in registry.models.values())
    for off in (Settings(models_dir=models_dir, intra_op_threads=2, cpu_lanes=1),
                Settings(models_dir=models_dir, intra_op_threads=1, cpu_lanes=2)):
        assert all(m.one_thread_session is None for m in load_registry(off).models.values())


def test_the_one_thread_session_answers_as_the_session_on_every_core(laned_registry) -> None:  # type: ignore[no-untyped-def]
    settings, registry = laned_registry
    denoiser = Denoiser(registry.models["ct-unet"], settings)
    try:
        batch = np.random.default_rng(3).uniform(0, 1, (3, 1, 80, 80)).astype(np.float32)
        wide, one_thread = denoiser.run_model(batch), denoiser.run_one_thread(batch)
        assert one_thread.shape == wide.shape == batch.shape
        np.testing.assert_allclose(one_thread, wide, rtol=0, atol=1e-5)
        # And a whole request through the batcher on lanes gives the same image.
        image = np.random.default_rng(4).uniform(-1000, 2000, (1, 150, 130))
        with denoiser.batcher.expect() as ticket:
            served = denoiser.denoise(image, PhaseTimer(), ticket)
        assert served.shape == image.shape and np.isfinite(served).all()
    finally:
        denoiser.close()
