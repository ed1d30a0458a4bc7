"""Worker processes that compute the Space's requests, each under a time limit.

A request runs in a child process that holds the models. A thread cannot be stopped, but a process can: when a
request runs past its time limit (or its client goes away mid-stream), its worker is killed and a fresh one takes
its place, so no request can hold a worker for longer than the limit. The web process itself never imports torch.

The child serves an object built by ``factory`` ("module:callable", imported in the child): it calls the object's
public methods by name and sends back each item a generator method yields (or the one value a method returns). A
``ValueError`` is the sender's mistake and its message goes back as is; anything else is reported as an internal
error (its traceback goes to the child's stderr).
"""
from __future__ import annotations

import importlib
import inspect
import json
import queue
import socket
import subprocess
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any, Iterator, Optional


class RequestError(Exception):
    """A request failed; the message is meant for whoever sent it."""


class WorkerStartError(RuntimeError):
    """A worker could not build the object it serves (for example, the model did not load)."""


class _Worker:
    """One child process and the socket to it."""

    def __init__(self, factory: str, kwargs: dict):
        parent, child = socket.socketpair()
        self.process = subprocess.Popen(
            [sys.executable, __file__, factory, json.dumps(kwargs), str(child.fileno())], pass_fds=(child.fileno(),)
        )
        child.close()
        self.conn = Connection(parent.detach())
        self.info: Optional[Any] = None

    def wait_ready(self, timeout: float) -> None:
        """Until the child has built its object (the first message is its ``info()``, or why it failed)."""
        if self.info is not None:
            return
        if not self.conn.poll(timeout):
            self.stop()
            raise WorkerStartError(f"the worker did not start within {timeout:g} s")
        try:
            kind, value = self.conn.recv()
        except (EOFError, OSError):
            kind, value = "error", f"the worker exited with status {self.process.wait()}"
        if kind != "ready":
            self.stop()
            raise WorkerStartError(value)
        self.info = value

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        self.conn.close()


class Pool:
    """``size`` workers serving ``factory(**kwargs)``; a request waits for a free one, then has ``time_limit``
    seconds."""

    def __init__(self, factory: str, kwargs: dict, *, size: int = 1, time_limit: float = 60.0,
                 start_timeout: float = 600.0):
        self.factory, self.kwargs, self.size = factory, kwargs, size
        self.time_limit, self.start_timeout = time_limit, start_timeout
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        for _ in range(size):
            self._idle.put(self._start())

    def _start(self) -> _Worker:
        worker = _Worker(self.factory, self.kwargs)
        with self._lock:
            self._all.append(worker)
        return worker

    def _replace(self, worker: _Worker) -> _Worker:
        worker.stop()
        with self._lock:
            self._all.remove(worker)
        return self._start()

    def info(self) -> Any:
        """What the served object's ``info()`` returned (waits for a worker to be ready)."""
        worker = self._idle.get()
        try:
            worker.wait_ready(self.start_timeout)
            return worker.info
        finally:
            self._idle.put(worker)

    def call(self, method: str, *args: Any) -> Any:
        """The result of a method that returns one value (the last item, for a generator method)."""
        result = None
        for result in self.stream(method, *args):
            pass
        return result

    def stream(self, method: str, *args: Any) -> Iterator[Any]:
        """The items ``method(*args)`` yields, as they come. Raises ``RequestError`` for bad input, an internal
        error, a worker that died, or a request that ran past the time limit (its worker is replaced)."""
        worker = self._idle.get()
        finished = False
        try:
            try:
                worker.wait_ready(self.start_timeout)  # a replaced worker may still be loading the models
            except WorkerStartError as error:
                raise RequestError(f"no worker could start: {error}") from None
            deadline = time.monotonic() + self.time_limit
            try:
                worker.conn.send((method, args))
                while True:
                    if not worker.conn.poll(max(0.0, deadline - time.monotonic())):
                        raise RequestError(
                            f"the request took longer than the time limit of {self.time_limit:g} s and was stopped"
                        )
                    kind, value = worker.conn.recv()
                    if kind == "item":
                        yield value
                        continue
                    finished = True
                    if kind == "error":
                        raise RequestError(value)
                    return
            except (EOFError, OSError):
                raise RequestError("the worker computing the request stopped unexpectedly; it was restarted") from None
        finally:
            # Unfinished (timed out, died, or the caller stopped listening): the worker may still be busy.
            self._idle.put(worker if finished else self._replace(worker))

    def close(self) -> None:
        with self._lock:
            for worker in self._all:
                worker.stop()
            self._all.clear()


# ---------------------------------------------------------------------- the child
def _serve(factory: str, kwargs: dict, fd: int) -> None:
    conn = Connection(fd)
    module, _, name = factory.partition(":")
    try:
        served = getattr(importlib.import_module(module), name)(**kwargs)
        info = served.info() if hasattr(served, "info") else None
    except Exception as error:
        traceback.print_exc()
        conn.send(("error", f"{factory}({kwargs}) failed: {type(error).__name__}: {error}"))
        return
    conn.send(("ready", info))
    while True:
        try:
            method, args = conn.recv()
        except (EOFError, OSError):  # the web process is gone
            return
        try:
            if method.startswith("_") or not callable(getattr(served, method, None)):
                raise ValueError(f"no such request: {method!r}")
            result = getattr(served, method)(*args)
            for item in result if inspect.isgenerator(result) else [result]:
                conn.send(("item", item))
            conn.send(("done", None))
        except ValueError as error:
            conn.send(("error", str(error)))
        except Exception as error:
            traceback.print_exc()
            conn.send(("error", f"internal error: {type(error).__name__}: {error}"))


if __name__ == "__main__":
    _serve(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]))
