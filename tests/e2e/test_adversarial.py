"""The adversarial corpus (bench/attacks.py) against a real uvicorn started as deployed
(``python -m app.server``): every attack is refused or served within the memory budget, never
with a 500, /healthz keeps answering while it runs, and memory comes back afterwards.

The figures against the committed models are ``python -m bench.adversarial``'s (docs/BENCHMARKS.md);
here the tiny models keep each case to seconds.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from bench.adversarial import Result, run_attack
from bench.attacks import CORPUS, Attack
from tests.tiny_models import write_model_set
from tests.uvicorn_server import uvicorn_server

BUDGET_MB = 1536
KEY = "adversarial-test-key-0123456789"  # the API needs one, as on a hospital network
# What each attack may get back: 0 is a connection closed unanswered (a head over the limit or too
# slow, or the client's own time-out after which it hangs up).
EXPECTED = {
    "v2 gzip tensor 4096 x 4096": {200},
    "v2 JSON of 15 MiB empty lists": {400},
    "multipart of 1 million fields": {400},
    "three 4096 x 4096 PNGs at once": {200, 503},
    "60,000 one-pixel frames, client gone at 2 s": {0, 200},
    "100 MiB header without a key": {0, 400, 431},
    "20 slow request heads": {0},
    "malformed /v2 requests": {400, 413, 415},
    "log forging paths": {404},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    processes: list[subprocess.Popen[bytes]] = []
    log = tmp_path_factory.mktemp("adversarial") / "server.log"
    with uvicorn_server(
        write_model_set(tmp_path_factory.mktemp("models")),
        log,
        started=processes.append,
        memory_budget_bytes=str(BUDGET_MB << 20),
        header_timeout_s="1",
        api_keys=KEY,
    ) as base_url:
        yield base_url, processes[0].pid


def test_the_corpus_covers_every_expectation() -> None:
    assert {attack.name for attack in CORPUS} == set(EXPECTED)


@pytest.mark.parametrize("attack", CORPUS, ids=[attack.name for attack in CORPUS])
def test_an_attack_is_refused_or_served_within_the_budget(server: tuple[str, int], attack: Attack) -> None:
    base_url, pid = server
    result: Result = run_attack(base_url, pid, attack, {"X-API-Key": KEY})
    print(f"\n{result}")
    assert 500 not in result.statuses and set(result.statuses) <= EXPECTED[attack.name], result.statuses
    assert result.health_failures == 0  # /healthz answered every probe while the attack ran
    assert result.peak_mb - result.idle_mb <= BUDGET_MB
    assert result.settled_mb <= 1.2 * result.idle_mb + 20  # memory back near idle afterwards
