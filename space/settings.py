"""The Space's settings (environment variables) and its limits on requests.

Kept free of torch and gradio: the web process and the worker processes both read it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# The shipped models when the Space runs from a checkout of the project (`make demo`), else their Hub repos
# (on a Space, the folder stands alone).
_CHECKOUT = Path(__file__).resolve().parent.parent / "hub_assets"
HUB_MODEL = "nclama/nclama-tiny"
HUB_BASELINE = "nclama/llama-tiny-baseline"


@dataclass(frozen=True)
class Limits:
    """Caps on what one request may ask for: each keeps a request's time and memory bounded."""

    prompt_chars: int = 300
    prompt_tokens: int = 160
    new_tokens: int = 64
    source_chars: int = 4000
    source_lines: int = 150
    functions: int = 16
    program_lines: int = 1500  # instructions of all compiled functions together
    call_chars: int = 300
    hard_steps: int = 20_000  # a traced hard run of 20000 steps takes ~3 s and ~250 MB here
    soft_steps: int = 100  # a soft trace keeps every cell's distribution: ~4 MB per step at V = 1024
    trace_rows: int = 400  # machine steps a trace shows
    memory_cells: int = 96  # memory cells a trace shows per step
    compile_value_size: int = 256


LIMITS = Limits()


@dataclass(frozen=True)
class Settings:
    """Where the models come from and how requests are served."""

    model: str
    baseline: str
    workers: int  # worker processes, each holding the models; also the number of requests computed at once
    time_limit: float  # seconds a request may take before its worker is stopped and replaced
    queue_size: int  # requests waiting beyond that; more are refused with "queue full"

    @classmethod
    def from_env(cls) -> "Settings":
        """``NCLAMA_MODEL`` and ``NCLAMA_BASELINE`` (a Hub repo id or a local folder; by default the shipped models),
        ``NCLAMA_WORKERS`` (1), ``NCLAMA_TIME_LIMIT`` (60 s), ``NCLAMA_QUEUE_SIZE`` (32)."""
        return cls(
            model=os.environ.get("NCLAMA_MODEL") or _shipped("nclama-tiny", HUB_MODEL),
            baseline=os.environ.get("NCLAMA_BASELINE") or _shipped("llama-tiny-baseline", HUB_BASELINE),
            workers=_positive("NCLAMA_WORKERS", 1, int),
            time_limit=_positive("NCLAMA_TIME_LIMIT", 60.0, float),
            queue_size=_positive("NCLAMA_QUEUE_SIZE", 32, int),
        )


def _shipped(folder: str, repo_id: str) -> str:
    local = _CHECKOUT / folder
    return str(local) if (local / "config.json").is_file() else repo_id


def _positive(name: str, default, kind):
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise SystemExit(f"{name}={text!r}: expected a positive {kind.__name__}") from None
    if value <= 0:
        raise SystemExit(f"{name}={text!r}: expected a positive {kind.__name__}")
    return value
