"""The micro-batcher: concurrent submissions share a call, a lone one does not wait, the queue is
bounded, failures reach every caller, and batched results equal single runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import anyio
import numpy as np
import pytest

from app.errors import ModelUnavailable, ServiceBusy
from app.inference.batcher import MicroBatcher
from app.inference.engine import Denoiser, PhaseTimer
from app.inference.registry import load_registry
from app.pipeline import DenoisePipeline
from app.settings import Settings

T = TypeVar("T")
LONG_DELAY_S = 5.0  # a batch window no test may ever sit out


class GatedModel:
    """Doubles its input; each call can be held at a gate, and every batch size is recorded."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.sizes: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.sizes.append(batch.shape[0])
        self.entered.set()
        assert self.gate.wait(30)
        return batch * 2


@pytest.fixture
def make_batcher() -> Iterator[Callable[..., MicroBatcher]]:
    made: list[MicroBatcher] = []

    def make(run: Callable[[np.ndarray], np.ndarray], **options: object) -> MicroBatcher:
        settings = {"max_batch": 8, "max_delay_s": LONG_DELAY_S, "max_queue": 64, **options}
        batcher = MicroBatcher("test", run, **settings)  # type: ignore[arg-type]
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        batcher.close()


def tiles(value: float, count: int = 1, size: int = 8) -> np.ndarray:
    return np.full((count, 1, size, size), value, np.float32)


def wait_for(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_concurrent_submissions_share_one_call(make_batcher: Callable[..., MicroBatcher]) -> None:
    model = GatedModel()
    batcher = make_batcher(model, max_delay_s=0)
    model.gate.clear()
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(batcher.submit, tiles(0))
        assert model.entered.wait(10)  # the first call holds the model ...
        rest = [pool.submit(batcher.submit, tiles(v)) for v in range(1, 6)]
        wait_for(lambda: batcher.queued_tiles == 5)  # ... while five more queue up
        model.gate.set()
        results = [first.result(10), *(f.result(10) for f in rest)]
    assert model.sizes == [1, 5]
    for value, (output, queued) in enumerate(results):
        np.testing.assert_array_equal(output, tiles(2 * value))  # each caller gets its own answer
        assert queued >= 0


def test_a_lone_request_runs_at_once(make_batcher: Callable[..., MicroBatcher]) -> None:
    batcher = make_batcher(GatedModel())
    with batcher.expect() as ticket:  # announced, as the pipeline does, and nobody else coming
        started = time.perf_counter()
        output, queued = batcher.submit(tiles(3), ticket)
    assert time.perf_counter() - started < LONG_DELAY_S / 5
    assert queued < LONG_DELAY_S / 5
    np.testing.assert_array_equal(output, tiles(6))


def test_a_lone_submission_runs_in_its_own_thread(make_batcher: Callable[..., MicroBatcher]) -> None:
    # No batch can form, so no hand-off to the collector thread and back (two wake-ups).
    threads: list[threading.Thread] = []

    def recording(batch: np.ndarray) -> np.ndarray:
        threads.append(threading.current_thread())
        return batch * 2

    batcher = make_batcher(recording, max_delay_s=0.05)
    with batcher.expect() as ticket:
        output, _ = batcher.submit(tiles(3), ticket)
    np.testing.assert_array_equal(output, tiles(6))
    assert threads == [threading.current_thread()]
    with batcher.expect() as ticket, batcher.expect():  # another request announced: it may join
        in_daemon_thread(batcher.submit, tiles(1), ticket).result(10)
    assert threads[1] is not threading.current_thread() and threads[1].name.startswith("batcher-test-")


def test_a_forming_batch_waits_for_announced_requests(make_batcher: Callable[..., MicroBatcher]) -> None:
    model = GatedModel()
    batcher = make_batcher(model)
    with ThreadPoolExecutor(2) as pool, batcher.expect() as early, batcher.expect() as late:
        first = pool.submit(batcher.submit, tiles(1), early)
        time.sleep(0.2)  # the first waits: another request has announced itself
        assert model.sizes == []
        second = pool.submit(batcher.submit, tiles(2), late)
        first.result(10), second.result(10)
    assert model.sizes == [2]


def test_the_wait_for_announced_requests_is_bounded(make_batcher: Callable[..., MicroBatcher]) -> None:
    batcher = make_batcher(GatedModel(), max_delay_s=0.05)
    with batcher.expect() as ticket, batcher.expect():  # the second never submits
        started = time.perf_counter()
        batcher.submit(tiles(1), ticket)
    assert time.perf_counter() - started < 2


def test_batches_never_mix_tile_shapes_or_exceed_the_maximum(
    make_batcher: Callable[..., MicroBatcher],
) -> None:
    model = GatedModel()
    batcher = make_batcher(model, max_batch=4, max_delay_s=0)
    model.gate.clear()
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(batcher.submit, tiles(0))
        assert model.entered.wait(10)
        small = [pool.submit(batcher.submit, tiles(v, count=2)) for v in (1, 2, 3)]
        large = pool.submit(batcher.submit, tiles(9, size=16))
        wait_for(lambda: batcher.queued_tiles == 7)
        model.gate.set()
        outputs = [f.result(10)[0] for f in (first, *small, large)]
    assert sorted(model.sizes) == [1, 1, 2, 4]
    assert [o.shape for o in outputs] == [(1, 1, 8, 8), *[(2, 1, 8, 8)] * 3, (1, 1, 16, 16)]


def test_batches_stay_within_their_pixel_cap(make_batcher: Callable[..., MicroBatcher]) -> None:
    """The cap bounds a call's working memory: three 2-tile submissions of 8 x 8 under a cap of
    3 tiles go one to a call; a single submission above the cap still runs, alone."""
    model = GatedModel()
    batcher = make_batcher(model, max_batch=8, max_delay_s=0, max_pixels=3 * 8 * 8)
    model.gate.clear()
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(batcher.submit, tiles(0))
        assert model.entered.wait(10)
        queued = [pool.submit(batcher.submit, tiles(v, count=2)) for v in (1, 2, 3)]
        oversized = pool.submit(batcher.submit, tiles(4, count=5))
        wait_for(lambda: batcher.queued_tiles == 11)
        model.gate.set()
        outputs = [f.result(10)[0] for f in (first, *queued, oversized)]
    assert model.sizes == [1, 2, 2, 2, 5]
    assert [float(o[0, 0, 0, 0]) for o in outputs] == [0, 2, 4, 6, 8]


def in_daemon_thread(function: Callable[..., T], *args: object) -> Future[T]:
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(function(*args))
        except BaseException as error:  # handed to whoever reads the future
            future.set_exception(error)

    threading.Thread(target=run, daemon=True).start()
    return future


def test_a_tile_shape_queued_between_two_others_is_skipped_not_compared(
    make_batcher: Callable[..., MicroBatcher],
) -> None:
    model = GatedModel()
    batcher = make_batcher(model, max_delay_s=0)
    model.gate.clear()
    first = in_daemon_thread(batcher.submit, tiles(0))  # a dead collector must not hang the test
    assert model.entered.wait(10)
    queued: list[Future[tuple[np.ndarray, float]]] = []
    for value, size in ((1, 8), (2, 16), (3, 8)):  # the 8 x 8 tiles go together, past the 16 x 16
        queued.append(in_daemon_thread(batcher.submit, tiles(value, size=size)))
        wait_for(lambda: batcher.queued_tiles == len(queued))
    model.gate.set()
    outputs = [f.result(10)[0] for f in (first, *queued)]
    assert model.sizes == [1, 2, 1]
    for value, size, output in zip((0, 1, 2, 3), (8, 8, 16, 8), outputs, strict=True):
        np.testing.assert_array_equal(output, tiles(2 * value, size=size))


def test_a_full_queue_is_refused_with_a_retry_time(make_batcher: Callable[..., MicroBatcher]) -> None:
    model = GatedModel()
    batcher = make_batcher(model, max_queue=2, max_delay_s=0)
    model.gate.clear()
    with ThreadPoolExecutor(4) as pool:
        running = pool.submit(batcher.submit, tiles(0))
        assert model.entered.wait(10)
        queued = pool.submit(batcher.submit, tiles(1, count=2))
        wait_for(lambda: batcher.queued_tiles == 2)
        with pytest.raises(ServiceBusy) as refused:
            batcher.submit(tiles(2))
        with pytest.raises(ServiceBusy):
            batcher.check_capacity()
        model.gate.set()
        running.result(10), queued.result(10)
    assert refused.value.retry_after_s >= 1 and refused.value.code == "service_busy"
    batcher.check_capacity()  # drained: room again


def test_a_failed_batch_fails_every_caller_that_fails_alone(
    make_batcher: Callable[..., MicroBatcher],
) -> None:
    model = GatedModel()
    failure = RuntimeError("the model failed")
    calls = 0

    def failing(batch: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 1:
            return model(batch)
        raise failure

    batcher = make_batcher(failing, max_delay_s=0)
    model.gate.clear()
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.submit, tiles(0))
        assert model.entered.wait(10)
        doomed = [pool.submit(batcher.submit, tiles(v)) for v in (1, 2, 3)]
        wait_for(lambda: batcher.queued_tiles == 3)
        model.gate.set()
        first.result(10)
        errors = [f.exception(10) for f in doomed]
    assert calls == 1 + 1 + 3  # the batch of three, then each of them alone
    assert all(e is failure for e in errors)


class PoisonedModel(GatedModel):
    """Doubles its input, but fails a whole call when any tile in it is negative (a bad input)."""

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        output = super().__call__(batch)
        if (batch < 0).any():
            raise RuntimeError("the model cannot take this input")
        return output


def test_a_bad_tile_fails_only_its_own_request_not_its_batch_neighbours(
    make_batcher: Callable[..., MicroBatcher],
) -> None:
    model = PoisonedModel()
    observed: list[int] = []
    batcher = make_batcher(
        model, max_delay_s=0, observer=lambda name, count, queued, seconds, **_: observed.append(count)
    )
    model.gate.clear()
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.submit, tiles(0))
        assert model.entered.wait(10)
        good = [pool.submit(batcher.submit, tiles(v, count=2)) for v in (1, 2)]
        wait_for(lambda: batcher.queued_tiles == 4)
        bad = pool.submit(batcher.submit, tiles(-1))
        wait_for(lambda: batcher.queued_tiles == 5)
        model.gate.set()
        first.result(10)
        outputs = [f.result(10)[0] for f in good]
        error = bad.exception(10)
    assert model.sizes == [1, 5, 2, 2, 1]  # the shared call failed; each ran again alone
    for value, output in zip((1, 2), outputs, strict=True):
        np.testing.assert_array_equal(output, tiles(2 * value, count=2))
    assert isinstance(error, RuntimeError)
    assert observed == [1, 2, 2]  # successful calls only
    np.testing.assert_array_equal(batcher.submit(tiles(4))[0], tiles(8))  # still serving


def test_the_batcher_keeps_serving_after_a_failure(make_batcher: Callable[..., MicroBatcher]) -> None:
    outcomes = iter([ValueError("once"), None])

    def flaky(batch: np.ndarray) -> np.ndarray:
        error = next(outcomes)
        if error is not None:
            raise error
        return batch + 1

    batcher = make_batcher(flaky, max_delay_s=0)
    with pytest.raises(ValueError):
        batcher.submit(tiles(0))
    np.testing.assert_array_equal(batcher.submit(tiles(0))[0], tiles(1))


def test_a_model_returning_the_wrong_count_fails_its_callers(
    make_batcher: Callable[..., MicroBatcher],
) -> None:
    batcher = make_batcher(lambda batch: batch[:1], max_delay_s=0)
    with pytest.raises(ValueError, match="outputs for"):
        batcher.submit(tiles(0, count=3))


@pytest.fixture(scope="module")
def ct_denoiser(models_dir) -> Iterator[Denoiser]:  # type: ignore[no-untyped-def]
    settings = Settings(
        models_dir=models_dir,
        intra_op_threads=1,
        tile_size=80,
        tile_overlap=16,
        tile_batch=2,
        batch_max_size=8,
        max_call_pixels=8 * 80 * 80,
        batch_max_delay_ms=1000,
    )
    denoiser = Denoiser(load_registry(settings).models["ct-unet"], settings)
    yield denoiser
    denoiser.close()


def test_batched_results_equal_single_runs(ct_denoiser: Denoiser) -> None:
    rng = np.random.default_rng(0)
    images = [rng.uniform(-1000, 2000, (1, 150, 130)) for _ in range(6)]  # 9 tiles of 80 x 80 each
    alone = [ct_denoiser.denoise(image, PhaseTimer()) for image in images]
    sizes: list[int] = []
    run = ct_denoiser.batcher._run

    def recording(batch: np.ndarray) -> np.ndarray:
        sizes.append(len(batch))
        return run(batch)

    def denoise(image: np.ndarray) -> np.ndarray:
        with ct_denoiser.batcher.expect() as ticket:
            return ct_denoiser.denoise(image, PhaseTimer(), ticket)

    ct_denoiser.batcher._run = recording
    try:
        with ThreadPoolExecutor(len(images)) as pool:
            together = list(pool.map(denoise, images))
    finally:
        ct_denoiser.batcher._run = run
    assert max(sizes) > ct_denoiser.plan.batch  # tiles of several requests shared calls
    for single, batched in zip(alone, together, strict=True):
        np.testing.assert_allclose(batched, single, rtol=0, atol=1e-6 * 4095)


def test_the_timer_splits_queue_from_infer(ct_denoiser: Denoiser) -> None:
    timer = PhaseTimer()
    ct_denoiser.denoise(np.zeros((2, 40, 40)), timer)
    assert set(timer.seconds) == {"preprocess", "queue", "infer", "postprocess"}
    assert all(seconds >= 0 for seconds in timer.seconds.values())


def test_the_pipeline_runs_a_raw_tensor_through_the_batcher(models_dir) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(models_dir=models_dir, intra_op_threads=1)
    pipeline = DenoisePipeline(load_registry(settings), settings)
    try:
        batch = np.random.default_rng(3).random((3, 1, 32, 24), dtype=np.float32)
        outputs, queued = anyio.run(pipeline.infer, "ct-unet", batch)
        np.testing.assert_array_equal(outputs, pipeline.denoisers["ct-unet"].run_model(batch))
        assert queued >= 0
    finally:
        pipeline.close()


def test_a_raw_tensor_runs_in_calls_no_larger_than_the_cap(models_dir) -> None:  # type: ignore[no-untyped-def]
    """/v2's tensors: many small images go a few to a call, a large one in blended tiles; no call
    holds more pixels than a tile, and the result matches one call on the whole tensor."""
    settings = Settings(models_dir=models_dir, intra_op_threads=1, tile_size=64, tile_overlap=8, tile_batch=4)
    pipeline = DenoisePipeline(load_registry(settings), settings)
    denoiser = pipeline.denoisers["ct-unet"]
    pixels: list[int] = []
    run = denoiser.batcher._run

    def recording(batch: np.ndarray) -> np.ndarray:
        pixels.append(batch.shape[0] * batch.shape[2] * batch.shape[3])
        return run(batch)

    denoiser.batcher._run = recording
    rng = np.random.default_rng(4)
    try:
        small = rng.random((5, 1, 32, 32), dtype=np.float32)
        outputs, _ = denoiser.run_tensor(small)
        assert pixels == [4 * 32 * 32, 32 * 32]  # 4 to a call fill one 64 x 64 tile's pixels
        np.testing.assert_allclose(outputs, run(small), atol=1e-6)
        pixels.clear()
        large = rng.random((2, 1, 200, 160), dtype=np.float32)
        outputs, _ = denoiser.run_tensor(large)
        assert outputs.shape == (2, 1, 200, 160) and max(pixels) <= 64 * 64 and len(pixels) > 2
        np.testing.assert_allclose(outputs, run(large), atol=2e-3)
    finally:
        denoiser.batcher._run = run
        pipeline.close()


def test_a_raw_tensor_stops_at_its_deadline(models_dir) -> None:  # type: ignore[no-untyped-def]
    from app.deadline import Deadline
    from app.errors import RequestTimedOut

    settings = Settings(models_dir=models_dir, intra_op_threads=1, tile_size=64, tile_overlap=8)
    pipeline = DenoisePipeline(load_registry(settings), settings)
    calls: list[int] = []
    denoiser = pipeline.denoisers["ct-unet"]
    run = denoiser.batcher._run
    deadline = Deadline(60)

    def expiring(batch: np.ndarray) -> np.ndarray:
        calls.append(1)
        deadline.started -= 120  # the time runs out during the first call
        return run(batch)

    denoiser.batcher._run = expiring
    try:
        with pytest.raises(RequestTimedOut):
            denoiser.run_tensor(np.zeros((8, 1, 64, 64), np.float32), deadline=deadline)
        assert len(calls) == 1
    finally:
        denoiser.batcher._run = run
        pipeline.close()


class Panic(BaseException):
    """Like pyo3's PanicException: not an Exception, so the model-failure path does not catch it."""


def test_a_bug_in_the_collector_fails_its_waiters_and_refuses_new_work(
    make_batcher: Callable[..., MicroBatcher],
) -> None:
    model = GatedModel()

    def panicking_after_the_first(batch: np.ndarray) -> np.ndarray:
        if model.sizes:
            raise Panic("a bug")
        return model(batch)

    batcher = make_batcher(panicking_after_the_first, max_delay_s=0)
    model.gate.clear()
    first = in_daemon_thread(batcher.submit, tiles(1))  # runs in its own thread, held at the gate
    assert model.entered.wait(10)
    queued = [in_daemon_thread(batcher.submit, tiles(v)) for v in (2, 3)]  # the collector's batch
    wait_for(lambda: batcher.queued_tiles == 2)
    model.gate.set()
    np.testing.assert_array_equal(first.result(10)[0], tiles(2))
    for waiting in queued:
        with pytest.raises(ModelUnavailable, match="inference worker stopped"):
            waiting.result(10)
    assert batcher.stopped and batcher.queued_tiles == 0
    with pytest.raises(ModelUnavailable, match="Panic"):
        batcher.submit(tiles(4))


def test_a_worker_stopped_by_a_bug_fails_its_waiters_and_refuses_new_work(
    make_batcher: Callable[..., MicroBatcher],
) -> None:
    def panicking(batch: np.ndarray) -> np.ndarray:
        raise Panic("a bug")

    batcher = make_batcher(panicking, max_delay_s=0)
    # Alone, it runs in its own thread: the bug stops the model all the same.
    waiting = in_daemon_thread(batcher.submit, tiles(1))  # a hang would fail here, not stall
    with pytest.raises(ModelUnavailable, match="inference worker stopped"):
        waiting.result(10)
    assert batcher.stopped and batcher.queued_tiles == 0
    with pytest.raises(ModelUnavailable, match="Panic"):
        batcher.submit(tiles(2))
