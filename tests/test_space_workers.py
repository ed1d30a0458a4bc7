"""The Space's worker pool (space/workers.py): time limits, crashes and abandoned streams never leave a worker hung;
the next request is served by a fresh one."""
import os
import time
from pathlib import Path

import pytest
from space_server import space_module

workers = space_module("workers")
Pool, RequestError, WorkerStartError = workers.Pool, workers.RequestError, workers.WorkerStartError


@pytest.fixture
def pool(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # the child imports space_sleeper from here
    pool = Pool("space_sleeper:Sleeper", {}, size=1, time_limit=2.0, start_timeout=60)
    yield pool
    pool.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_calls_streams_and_refusals(pool):
    assert pool.call("echo", [1, "two"]) == [1, "two"]
    assert list(pool.stream("count", 3)) == [0, 1, 2]
    with pytest.raises(RequestError, match="^the prompt is empty$"):
        pool.call("refuse", "the prompt is empty")
    with pytest.raises(RequestError, match="internal error: KeyError"):
        pool.call("bug")
    with pytest.raises(RequestError, match="no such request"):
        pool.call("_secret")
    assert pool.call("echo", 5) == 5  # the same worker served all of it
    assert pool.info()["pid"] == pool.call("info")["pid"]


def test_a_request_past_the_time_limit_is_stopped_and_its_worker_replaced(pool):
    first = pool.info()["pid"]
    started = time.monotonic()
    with pytest.raises(RequestError, match="time limit of 2 s"):
        pool.call("sleep", 30)
    assert time.monotonic() - started < 10
    assert pool.call("sleep", 0.1) == "slept"
    assert pool.info()["pid"] != first and not _alive(first)


def test_a_crashed_worker_is_replaced(pool):
    first = pool.info()["pid"]
    with pytest.raises(RequestError, match="stopped unexpectedly"):
        pool.call("crash")
    assert pool.call("echo", "again") == "again"
    assert pool.info()["pid"] != first


def test_an_abandoned_stream_frees_its_worker(pool):
    first = pool.info()["pid"]
    stream = pool.stream("count", 10**9)
    assert next(stream) == 0
    stream.close()  # the client went away mid-stream: the worker, still busy, is replaced
    assert pool.call("echo", 1) == 1
    assert pool.info()["pid"] != first and not _alive(first)


def test_a_worker_that_cannot_start_says_why(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    pool = Pool("space_sleeper:Sleeper", {"fail_start": True}, size=1, start_timeout=60)
    try:
        with pytest.raises(WorkerStartError, match="no model here"):
            pool.info()
    finally:
        pool.close()
