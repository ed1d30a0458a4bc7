"""Tables and plots of the experiments, read from what training and evaluation wrote (never recomputed here).

- ``accuracy_by_length``: models side by side, exact match per task and length (``eval_results.json`` of each), as a
  markdown table and a PNG (one panel per task, accuracy against length, the training range shaded).
- ``what_learns_what``: the probes a training run logged (``train_log.json``, ``training.ProbeCallback``): the gate
  at the answer's first position and the call accuracy, overall and per task, against training steps.

matplotlib is imported only by the plotting functions.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Optional, Union

from .tasks import TRAINING_RANGES

PathLike = Union[str, Path]
Ranges = Optional[Mapping[str, tuple[int, int]]]


def _training_range(task: str, ranges: Ranges) -> tuple[Optional[int], Optional[int]]:
    """The lengths a task was trained on: ``ranges`` (what a recipe trained on), else tasks.TRAINING_RANGES."""
    if ranges and task in ranges:
        return tuple(ranges[task])
    return TRAINING_RANGES.get(task, {}).get("length", (None, None))


def _read(path: PathLike, name: str, key: str, what: str) -> list:
    """``key`` of the JSON file ``path`` (or of ``path/name`` for a folder), or a ValueError naming the file."""
    path = Path(path)
    if path.is_dir():
        path = path / name
    try:
        return list(json.loads(path.read_text())[key])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not {what} ({error})") from None


def load_results(path: PathLike, split: str = "train") -> list[dict]:
    """The rows of an ``eval_results.json`` (a file, or the folder holding one) for one template split."""
    rows = _read(path, "eval_results.json", "rows", "an evaluation result")
    return [row for row in rows if row.get("split", "train") == split]


def accuracy_table(results: Mapping[str, list[dict]], ranges: Ranges = None) -> str:
    """Markdown: one row per (task, length), one column per model (exact match, "-" where a model has no row);
    ``ranges``: task -> (low, high) trained on, where a run differs from tasks.TRAINING_RANGES."""
    labels = list(results)
    cells: dict[tuple[str, int], dict[str, float]] = {}
    for label, rows in results.items():
        for row in rows:
            cells.setdefault((row["task"], int(row["length"])), {})[label] = float(row["exact_match"])
    out = ["| task | length | in training range | " + " | ".join(labels) + " |", "|---|---:|---|" + "---:|" * len(labels)]
    for (task, length), by_model in sorted(cells.items()):
        low, high = _training_range(task, ranges)
        inside = "yes" if low is not None and low <= length <= high else "no"
        values = " | ".join(f"{by_model[label]:.3f}" if label in by_model else "-" for label in labels)
        out.append(f"| {task} | {length} | {inside} | {values} |")
    return "\n".join(out)


def plot_accuracy_by_length(results: Mapping[str, list[dict]], path: PathLike, ranges: Ranges = None) -> Path:
    """PNG: one panel per task, exact match against length, a line per model, the training range shaded."""
    plt = _pyplot()

    tasks = sorted({row["task"] for rows in results.values() for row in rows})
    columns = min(4, len(tasks))
    rows_n = math.ceil(len(tasks) / columns)
    fig, axes = plt.subplots(rows_n, columns, figsize=(max(6, 4 * columns), 3 * rows_n), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        for label, rows in results.items():
            points = sorted((int(r["length"]), float(r["exact_match"])) for r in rows if r["task"] == task)
            if points:
                ax.plot(*zip(*points), marker="o", label=label)
        low, high = _training_range(task, ranges)
        if low is not None:
            ax.axvspan(low, high, color="0.9", zorder=0)
        ax.set_title(task)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel(TRAINING_RANGES.get(task, {}).get("unit", "length"))
        ax.set_ylabel("exact match")
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Exact match by length (shaded: the training range)")
    fig.tight_layout()
    return _save(plt, fig, path)


def probe_history(train_log: PathLike) -> list[dict]:
    """The probe entries of a ``train_log.json`` (or of the folder holding one), in step order."""
    history = _read(train_log, "train_log.json", "log_history", "a training log")
    probes = [entry for entry in history if any(key.startswith("probe/") for key in entry)]
    if not probes:
        raise ValueError(f"{train_log}: the run logged no probes (set probe.steps in the recipe)")
    return sorted(probes, key=lambda entry: entry["step"])


def plot_what_learns_what(probes: list[dict], path: PathLike) -> Path:
    """PNG: the gate at the answer (left) and the call accuracy (right) against steps, overall (bold) and per task."""
    plt = _pyplot()

    steps = [p["step"] for p in probes]
    tasks = sorted({key.split("/")[1] for p in probes for key in p if key.count("/") == 2})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric, title in ((axes[0], "gate", "gate at the answer's first token"), (axes[1], "call_accuracy", "top call is the task's program")):
        for task in tasks:
            values = [p.get(f"probe/{task}/{metric}", math.nan) for p in probes]
            if not all(math.isnan(v) for v in values):
                ax.plot(steps, values, alpha=0.5, linewidth=1, label=task)
        ax.plot(steps, [p.get(f"probe/{metric}", math.nan) for p in probes], color="black", linewidth=2.5, label="all tasks")
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.set_ylim(-0.05, 1.05)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle("What learns what: calls emerge from answer supervision alone")
    fig.tight_layout()
    return _save(plt, fig, path)


def probe_table(probes: list[dict]) -> str:
    """Markdown: per probed step, the overall gate and call accuracy."""
    out = ["| step | gate at the answer | call accuracy |", "|---:|---:|---:|"]
    for p in probes:
        out.append(f"| {p['step']} | {p.get('probe/gate', math.nan):.3f} | {p.get('probe/call_accuracy', math.nan):.2f} |")
    return "\n".join(out)


def _pyplot():
    """matplotlib's pyplot without a display (imported only when a plot is made)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
