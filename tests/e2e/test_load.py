"""Load and overload against a real uvicorn process.

Load: 16 closed-loop clients for ``LOAD_SECONDS`` send a mix of 8- and 16-bit PNGs and DICOM
files of every modality, with and without metrics, as images and as JSON. Every answer must be a
valid image, the server's resident memory must stay flat after the warm-up, and latency must not
drift: bounds are ratios between parts of the same run, never wall times.
``LOAD_TEST_SECONDS=900 pytest tests/e2e/test_load.py -s`` runs a longer soak by hand.

Overload: far more simultaneous requests than a small batch queue holds must be answered 503
``service_busy`` with ``Retry-After`` (never 500, never a timeout), and served again afterwards.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from bench.loadgen import percentile_ms
from tests.files import dicom_file, png_bytes
from tests.load_client import (
    Answer,
    Case,
    MemorySampler,
    metric_total,
    metrics_of,
    phantom,
    post_case,
    run_closed_loop,
    same_dicom,
    same_png,
    same_png_as_json,
    served,
)
from tests.tiny_models import write_model_set

REPO = Path(__file__).resolve().parents[2]

LOAD_SECONDS = float(os.environ.get("LOAD_TEST_SECONDS", "120"))
CLIENTS = 16
WARM_UP_S = min(20.0, LOAD_SECONDS / 4)
MAX_RSS_GROWTH = 0.10  # resident memory, end of the run over the end of the warm-up
P99_OVER_P50 = 10.0  # the slow tail of the steady state
SLOWEST_OVER_WARM_UP_P99 = 10.0  # no request far slower than the slow tail of the warm-up
LATE_OVER_EARLY_P50 = 3.0  # median latency in the last quarter over the first, after warm-up

TILE_SIZE = 128
BURST = 32  # simultaneous requests in the overload test


def load_cases() -> list[Case]:
    ct16 = phantom((96, 112), 3000, np.uint16, seed=1)
    ct8 = phantom((80, 64), 255, np.uint8, seed=2)
    mr_clean = phantom((128, 100), 2000, np.uint16, seed=3, noise=0)
    mr_noisy = phantom((128, 100), 2000, np.uint16, seed=3)
    xray8 = phantom((150, 130), 255, np.uint8, seed=4)
    xray16 = phantom((200, 180), 16000, np.uint16, seed=5)
    ct_dicom, mr_dicom = dicom_file("CT_small.dcm"), dicom_file("MR_small_RLE.dcm")
    return [
        Case("ct png16", {"file": ("a.png", png_bytes(ct16))}, same_png(ct16), {"modality": "ct"}),
        Case(
            "ct png8 autoencoder, no metrics",
            {"file": ("b.png", png_bytes(ct8))},
            same_png(ct8),
            {"modality": "ct", "model": "autoencoder", "metrics": "none"},
        ),
        Case(
            "mr png16 with reference",
            {"file": ("c.png", png_bytes(mr_noisy)), "reference": ("d.png", png_bytes(mr_clean))},
            same_png(mr_noisy),
            {"modality": "mr", "metrics": "all"},
        ),
        Case(
            "xray png8 as JSON with preview",
            {"file": ("e.png", png_bytes(xray8))},
            same_png_as_json(xray8),
            {"modality": "xray", "preview": "true"},
            {"accept": "application/json"},
        ),
        Case("xray png16", {"file": ("f.png", png_bytes(xray16))}, same_png(xray16), {"modality": "xray"}),
        Case("ct dicom", {"file": ("g.dcm", ct_dicom)}, same_dicom(ct_dicom)),
        Case(
            "mr dicom rle, no metrics",
            {"file": ("h.dcm", mr_dicom)},
            same_dicom(mr_dicom),
            {"metrics": "none"},
        ),
    ]


def rss_over(samples: list[tuple[float, int]], start_s: float, end_s: float) -> float:
    """Median resident KiB of the samples taken between ``start_s`` and ``end_s``."""
    window = [kib for seconds, kib in samples if start_s <= seconds <= end_s]
    assert window, f"no memory sample between {start_s} and {end_s} s"
    return float(np.median(window))


def latencies(answers: list[Answer], start_s: float, end_s: float) -> list[float]:
    return [a.seconds for a in answers if start_s <= a.started_s < end_s]


def test_sixteen_clients_get_only_valid_images_with_flat_memory_and_latency(tmp_path: Path) -> None:
    cases = load_cases()
    models = write_model_set(tmp_path / "models")
    # Small tiles: the two images above 128 pixels a side go through tiling.
    with served(models, tmp_path / "server.log", tile_size=str(TILE_SIZE)) as (client, process):
        with MemorySampler(process.pid) as memory:
            answers = run_closed_loop(str(client.base_url), cases, CLIENTS, LOAD_SECONDS)
        counted = metrics_of(client)

    end_s = max(a.started_s for a in answers)
    steady = latencies(answers, WARM_UP_S, end_s + 1)
    quarter = (end_s - WARM_UP_S) / 4
    early, late = (
        latencies(answers, WARM_UP_S, WARM_UP_S + quarter),
        latencies(answers, end_s - quarter, end_s + 1),
    )
    warm_up_p99 = percentile_ms(latencies(answers, 0, WARM_UP_S), 99)
    p50, p99, slowest = percentile_ms(steady, 50), percentile_ms(steady, 99), max(steady) * 1000
    rss_start = rss_over(memory.samples, WARM_UP_S, WARM_UP_S + 10)
    rss_end = rss_over(memory.samples, memory.samples[-1][0] - 5, memory.samples[-1][0])
    growth = rss_end / rss_start - 1
    problems = [a for a in answers if a.problem is not None]
    print(
        f"\nload: {len(answers)} requests from {CLIENTS} clients in {LOAD_SECONDS:.0f} s "
        f"({len(answers) / LOAD_SECONDS:.1f}/s), {len(problems)} failed; by case "
        f"{dict(Counter(a.case for a in answers))}\n"
        f"latency after {WARM_UP_S:.0f} s warm-up: p50 {p50:.1f} ms, p99 {p99:.1f} ms, slowest "
        f"{slowest:.1f} ms; warm-up p99 {warm_up_p99:.1f} ms; median first quarter "
        f"{percentile_ms(early, 50):.1f} ms, last quarter {percentile_ms(late, 50):.1f} ms\n"
        f"server RSS {rss_start / 1024:.1f} MiB after warm-up, {rss_end / 1024:.1f} MiB at the end "
        f"({100 * growth:+.2f} %); every 10 s (MiB): "
        f"{[round(kib / 1024, 1) for seconds, kib in memory.samples[::10]]}"
    )

    assert not problems, f"{len(problems)} bad answers, first: {problems[:3]}"
    assert set(Counter(a.case for a in answers)) == {c.name for c in cases}
    assert metric_total(counted, "denoise_requests_total", status="200") == len(answers)
    assert metric_total(counted, "denoise_in_flight") == 0
    assert growth < MAX_RSS_GROWTH
    assert p99 <= P99_OVER_P50 * p50
    assert slowest <= SLOWEST_OVER_WARM_UP_P99 * warm_up_p99
    assert percentile_ms(late, 50) <= LATE_OVER_EARLY_P50 * percentile_ms(early, 50)


def test_a_burst_beyond_the_queue_gets_503_with_retry_after_and_is_served_after(tmp_path: Path) -> None:
    # The committed CT U-Net takes a large fraction of a second per 512 x 512 image on one
    # thread, so a queue of two tiles fills while the rest of the burst is still arriving.
    image = phantom((512, 512), 4000, np.uint16, seed=6)
    case = Case("ct 512", {"file": ("x.png", png_bytes(image))}, same_png(image), {"modality": "ct"})
    queue = {
        "batch_queue_tiles": "2",
        "tile_batch": "1",
        "batch_max_size": "1",
        "max_concurrent_inferences": "1",
    }
    start = threading.Barrier(BURST)

    def send(client: httpx.Client) -> httpx.Response | httpx.HTTPError:
        start.wait(60)
        try:
            return post_case(client, case)
        except httpx.HTTPError as error:  # a timeout or a dropped connection fails the test below
            return error

    with served(REPO / "models", tmp_path / "server.log", **queue) as (client, _):
        with ThreadPoolExecutor(BURST) as pool:
            answers = list(pool.map(send, [client] * BURST))
        counted = metrics_of(client)
        after = post_case(client, case)

    failed = [a for a in answers if not isinstance(a, httpx.Response)]
    assert not failed, failed
    responses = [a for a in answers if isinstance(a, httpx.Response)]
    statuses = Counter(r.status_code for r in responses)
    print(f"\noverload: {BURST} simultaneous requests, queue of 2 tiles: {dict(statuses)}")
    assert set(statuses) == {200, 503}, statuses
    for response in responses:
        if response.status_code == 503:
            assert response.json()["error"] == "service_busy" and "retry" in response.json()["detail"]
            assert int(response.headers["retry-after"]) >= 1
        else:
            case.check(response)
    assert metric_total(counted, "denoise_failures_total", reason="service_busy") == statuses[503]
    assert after.status_code == 200, after.text
    case.check(after)
