"""The counters of `bonescan bench kill` without a server: the server-side request log, the
client-side watchdog and attempt counter, and the accounting that turns them into figures.
(test_reliability.py runs them against a real server that is SIGKILLed.)"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bonescan import contract as C
from bonescan.benchmarks.faults import _AttemptCounter, account, run_with_deadline
from bonescan.client import BoneScanClient
from bonescan.client.core import ClientError
from bonescan.client.inputs import Request
from bonescan.serving.pybackend import RequestLog, read_request_log


class FakeRequest:
    """What RequestLog reads of a python-backend request: its Triton request id."""

    def __init__(self, rid: str):
        self.rid = rid

    def request_id(self) -> str:
        return self.rid


def test_request_log_counts_an_id_executed_twice(tmp_path: Path):
    path = tmp_path / "ids.log"
    first = RequestLog(path)  # the server before the kill ...
    first.record([FakeRequest("r0"), FakeRequest("r1"), FakeRequest("")])  # an id-less request is not counted
    first.close()
    second = RequestLog(path)  # ... and after the restart, which runs r1 again
    second.record([FakeRequest("r1"), FakeRequest("r2")])
    second.close()
    executed = read_request_log(path)
    assert executed == Counter({"r0": 1, "r1": 2, "r2": 1})
    res = account(["r0", "r1", "r2"], {0: "ok", 1: "ok", 2: "ok"}, executed, Counter({"r0": 1, "r1": 2, "r2": 1}))
    assert res["executed_twice"] == 1 and res["executed_twice_ids"] == ["r1"]
    assert res["answered_correctly"] == 3 and res["lost"] == 0 and res["answered_not_executed"] == 0
    assert (res["retries_total"], res["retries_max"]) == (1, 1)


def test_account_counts_every_kind_of_outcome():
    ids = [f"r{i}" for i in range(6)]
    outcomes = {0: "ok", 1: "wrong", 2: "error: ClientError: localhost:1: server unavailable after 3 attempt(s)",
                3: "error: ClientError: localhost:1: no answer within 60 s (r3)"}  # r4 and r5 have no outcome: lost
    executed = Counter({"r0": 1, "r2": 1, "r3": 1, "r4": 1})  # r1 was answered, yet the server's log lacks it
    attempts = Counter({"r0": 1, "r1": 1, "r2": 3, "r3": 1, "r4": 1})  # r5 was never sent
    res = account(ids, outcomes, executed, attempts)
    assert (res["answered_correctly"], res["answered_wrong"], res["errors"], res["errors_deadline_exceeded"]) == (1, 1, 2, 1)
    assert (res["lost"], res["lost_never_sent"], res["lost_ids"]) == (2, 1, ["r4", "r5"])
    assert res["answered_not_executed"] == 1 and res["executed_twice"] == 0 and res["executed_on_server"] == 4
    assert (res["retries_total"], res["retries_max"], res["attempts_total"]) == (2, 2, 7)
    assert read_request_log("/nonexistent/ids.log") == Counter()


def test_watchdog_counts_a_stuck_request_as_lost_and_does_not_hang():
    release = threading.Event()

    def send(i: int) -> str:
        if i == 2:
            release.wait()  # stuck forever (until the test ends)
        if i == 3:
            raise RuntimeError("connection reset")
        return "ok"

    t0 = time.monotonic()
    outcomes = run_with_deadline(send, 6, 2, deadline_s=1.5)
    took = time.monotonic() - t0
    release.set()
    assert took < 5
    assert 2 not in outcomes and outcomes[3].startswith("error: RuntimeError: connection reset")
    assert all(outcomes[i] == "ok" for i in (0, 1, 4, 5))  # one thread stuck, the other ends the rest
    res = account([f"r{i}" for i in range(6)], outcomes, Counter(), Counter())
    assert res["lost"] == 1 and res["errors"] == 1 and res["answered_correctly"] == 4


class Unavailable(Exception):
    """What tritonclient raises when nothing listens: its status() is UNAVAILABLE."""

    def status(self) -> str:
        return "StatusCode.UNAVAILABLE"


def test_attempt_counter_sees_each_try_of_the_client_library():
    """Against a server that never answers, the client library tries 1 + retries times; the counter
    sees each attempt and gives each the request's id, and the library's error is unchanged."""
    sent_ids: list[str] = []

    class DeadServer:
        def infer(self, *args, **kwargs):
            sent_ids.append(kwargs["request_id"])
            raise Unavailable("failed to connect to all addresses")

        def close(self) -> None:
            pass

    client = BoneScanClient("localhost:1", retries=3, backoff_s=0.01, check_on_connect=False, want_probability=False)
    client.client.close()
    counter = _AttemptCounter(DeadServer())
    client.client = counter
    counter.sending("r7")
    image = np.ones(C.IMAGE_DIMS, np.float32)
    with pytest.raises(ClientError, match="unavailable after 4 attempt"):
        client.segment_prepared([Request(image, "", (2.0, 2.0), "r7")])
    assert counter.attempts == Counter({"r7": 4}) and sent_ids == ["r7"] * 4
    res = account(["r7"], {0: "error: unavailable"}, Counter(), counter.attempts)
    assert (res["retries_total"], res["retries_max"], res["errors"]) == (3, 3, 1)
