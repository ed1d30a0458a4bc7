"""A served object for the worker-pool tests (tests/test_space_workers.py): cheap to start, and able to be slow,
to fail and to crash on request."""
import os
import time


class Sleeper:
    def __init__(self, fail_start: bool = False):
        if fail_start:
            raise RuntimeError("no model here")
        self.pid = os.getpid()

    def info(self) -> dict:
        return {"pid": self.pid}

    def echo(self, value):
        return value

    def count(self, n: int):
        for i in range(n):
            yield i

    def sleep(self, seconds: float) -> str:
        time.sleep(seconds)
        return "slept"

    def refuse(self, reason: str):
        raise ValueError(reason)

    def bug(self):
        return {}["missing"]

    def crash(self):
        os._exit(3)

    def _secret(self):
        return "never served"
