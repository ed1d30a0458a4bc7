"""The Space's settings (environment variables) and its limits on requests.

Kept free of torch and gradio: the web process and the worker processes both read it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent  # the project's checkout, when the Space runs from one (`make demo`)
HUB_MODEL = "nclama/nclama-tiny"
HUB_BASELINE = "nclama/llama-tiny-baseline"


@dataclass(frozen=True)
class Limits:
    """Caps on what one request may ask for: each keeps a request's time and memory bounded."""

    prompt_chars: int = 600  # a 64-item list of 3-digit numbers is about 330 characters, 200 tokens
    prompt_tokens: int = 320
    new_tokens: int = 256  # its sorted answer is about 195 tokens
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
class OfferedModel:
    """A model the Space offers: the NCLlama model (a Hub repo id or a local folder), the plain baseline it is
    compared with, and for a model built from the project rather than shipped, the commands that build it (run from
    the project's root)."""

    model: str
    baseline: str
    build: tuple[str, ...] = ()

    @property
    def built(self) -> bool:
        """A shipped model always is; a model built from the project once its folder holds a config.json."""
        return not self.build or (Path(self.model) / "config.json").is_file()

    def not_built(self, name: str) -> str:
        """Why ``name`` cannot be asked yet, and the commands that build it (a message for the API and, as Markdown,
        for the page)."""
        commands = ", then ".join(f"`{command}`" for command in self.build)
        return (f"{name} is not built here: `{self.model}` holds no config.json; build it from the project's root "
                f"with {commands}")


@dataclass(frozen=True)
class _Source:
    """Where an offered model comes from: the variables that name its folders, and their defaults."""

    model_variable: str
    baseline_variable: str
    model: str
    baseline: str
    build: tuple[str, ...] = ()

    def resolve(self) -> OfferedModel:
        return OfferedModel(os.environ.get(self.model_variable) or self.model,
                            os.environ.get(self.baseline_variable) or self.baseline, self.build)


def _shipped(folder: str, repo_id: str) -> str:
    """A shipped model's folder in a checkout of the project, else its Hub repo (on a Space, the folder stands
    alone)."""
    local = _ROOT / "hub_assets" / folder
    return str(local) if (local / "config.json").is_file() else repo_id


# Every model the Space offers, by the name the UI and the API use; the first is the default.
_SOURCES = {
    "nclama-tiny": _Source("NCLAMA_MODEL", "NCLAMA_BASELINE", _shipped("nclama-tiny", HUB_MODEL),
                           _shipped("llama-tiny-baseline", HUB_BASELINE)),
    "nclama-smollm2-135m": _Source(
        "NCLAMA_SMOLLM2_MODEL", "NCLAMA_SMOLLM2_BASELINE",
        str(_ROOT / "out" / "nclama-smollm2-135m-hub"), str(_ROOT / "out" / "smollm2"),
        build=("nclama base smollm2-135m-instruct -o out/smollm2",
               "nclama export hub_assets/nclama-smollm2-135m --base out/smollm2 -o out/nclama-smollm2-135m-hub"),
    ),
}
DEFAULT_MODEL = next(iter(_SOURCES))


@dataclass(frozen=True)
class Settings:
    """Which models are offered and how requests are served."""

    models: dict[str, OfferedModel]  # by name, the default first; those not built are listed with how to build them
    workers: int  # worker processes, each holding the models; also the number of requests computed at once
    time_limit: float  # seconds a request may take before its worker is stopped and replaced
    queue_size: int  # requests waiting beyond that; more are refused with "queue full"

    @classmethod
    def from_env(cls) -> "Settings":
        """``NCLAMA_MODEL`` and ``NCLAMA_BASELINE`` (a Hub repo id or a local folder; by default the shipped models),
        ``NCLAMA_SMOLLM2_MODEL`` and ``NCLAMA_SMOLLM2_BASELINE`` (folders; by default ``out/nclama-smollm2-135m-hub``
        and ``out/smollm2`` of the checkout), ``NCLAMA_WORKERS`` (1), ``NCLAMA_TIME_LIMIT`` (60 s),
        ``NCLAMA_QUEUE_SIZE`` (32)."""
        return cls(
            models={name: source.resolve() for name, source in _SOURCES.items()},
            workers=_positive("NCLAMA_WORKERS", 1, int),
            time_limit=_positive("NCLAMA_TIME_LIMIT", 60.0, float),
            queue_size=_positive("NCLAMA_QUEUE_SIZE", 32, int),
        )

    @property
    def built(self) -> dict[str, OfferedModel]:
        """The models that can be asked now."""
        return {name: model for name, model in self.models.items() if model.built}


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
