"""Evaluation (toolchain): exact match of greedy generations on the tasks of :mod:`modeling_nclama.tasks`, per task
and length, for any causal language model of transformers.

The rule (the same in the ``evaluate`` metric ``hub_assets/metrics/nclama_exact_match``): a text's answer is the text
up to its first newline or end-of-sequence marker, stripped; a prediction is right when its answer equals the
reference's.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from .checkpoints import EVAL_RESULTS
from .tasks import EVAL_LENGTHS, TASKS, make_dataset, validate
from .tool_use import answer_call, tool_text

__all__ = ["END_MARKERS", "RESULTS_JSON", "RESULTS_MD", "answer_text", "exact_match", "evaluate_model",
           "format_table", "write_results"]

#: Where an answer ends: a newline, or an end-of-sequence token left in decoded text (LLaMA 3, LLaMA 3 chat, LLaMA 2).
END_MARKERS: tuple[str, ...] = ("\n", "<|end_of_text|>", "<|eot_id|>", "</s>")
RESULTS_JSON = EVAL_RESULTS  # the model card's table (checkpoints.model_card) reads it
RESULTS_MD = "eval_results.md"


def answer_text(text: str) -> str:
    """The answer part of a generated text: up to the first newline or end-of-sequence marker, stripped."""
    for marker in END_MARKERS:
        text = text.split(marker, 1)[0]
    return text.strip()


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """The fraction of predictions whose :func:`answer_text` equals the reference's."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        raise ValueError("no predictions to score")
    return sum(answer_text(p) == answer_text(r) for p, r in zip(predictions, references)) / len(references)


class _StopAtTokens(StoppingCriteria):
    """Finishes a sequence when it emits a token whose text holds a newline (EOS is generate's own stop)."""

    def __init__(self, token_ids: torch.Tensor):
        self.token_ids = token_ids

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.isin(input_ids[:, -1], self.token_ids.to(input_ids.device))


def _newline_tokens(tokenizer) -> torch.Tensor:
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return torch.tensor([i for i, text in enumerate(texts) if "\n" in text], dtype=torch.long)


def _left_padded(tokenizer, prompts: Sequence[str], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts tokenized as in training (with the tokenizer's special tokens) and padded on the left, so that every
    generation starts right after its own prompt."""
    ids = tokenizer(list(prompts))["input_ids"]
    width = max(map(len, ids))
    input_ids = torch.tensor([[pad_id] * (width - len(x)) + x for x in ids], dtype=torch.long)
    attention_mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], dtype=torch.long)
    return input_ids, attention_mask


def _answer_budget(tokenizer, rows: Sequence[dict], tool_calls: bool = False) -> int:
    """Enough new tokens for the longest right answer (or call) of a batch: separator, answer, the stop token (+1)."""
    texts = [(tool_text(row) if tool_calls else row["text"])[len(row["prompt"]):] for row in rows]
    return max(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]) + 2


def evaluate_model(model, tokenizer, *, tasks: Sequence[str] = TASKS, lengths: Optional[Sequence[int]] = None,
                   n_per_length: int = 50, seed: int = 0, split: str = "train", batch_size: int = 16,
                   max_new_tokens: Optional[int] = None, progress: bool = True, tool_calls: bool = False,
                   max_value: Optional[int] = None) -> list[dict]:
    """Exact match of greedy generation on ``n_per_length`` examples of every (task, length).

    Works for any causal LM whose ``generate`` takes ``input_ids``/``attention_mask`` (LlamaForCausalLM,
    NCLlamaForCausalLM): prompts are left-padded in batches, generation is greedy and stops at EOS or a newline,
    and only the new tokens are decoded. ``lengths`` (default: each task's :data:`~modeling_nclama.tasks.EVAL_LENGTHS`)
    apply to every task; ``max_new_tokens`` defaults to what the longest right answer of each batch needs.
    With ``tool_calls`` the model is the tool-use baseline: it writes a call, which ``tool_use.answer_call``
    answers, and that answer is scored. ``max_value`` caps list items (``tasks.make_dataset``). Returns one row per (task, length): ``{task, length, split, n, exact_match}``."""
    tasks = list(tasks)
    validate(tasks, lengths, split)
    if not isinstance(n_per_length, int) or n_per_length <= 0:
        raise ValueError(f"n_per_length must be a positive int, got {n_per_length!r}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size!r}")
    cells = [(task, length) for task in tasks for length in (lengths or EVAL_LENGTHS[task])]
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    stop = StoppingCriteriaList([_StopAtTokens(_newline_tokens(tokenizer))])
    was_training = model.training
    model.eval()
    rows = []
    try:
        with tqdm(total=len(cells) * n_per_length, desc="evaluate", unit="example", disable=not progress) as bar:
            for task, length in cells:
                data = make_dataset([task], n_per_length, seed=seed, split=split, lengths=[length], max_value=max_value).to_list()
                predictions = []
                for start in range(0, len(data), batch_size):
                    batch = data[start:start + batch_size]
                    input_ids, attention_mask = _left_padded(tokenizer, [row["prompt"] for row in batch], pad_id)
                    with torch.no_grad():
                        out = model.generate(input_ids=input_ids.to(model.device),
                                             attention_mask=attention_mask.to(model.device),
                                             max_new_tokens=max_new_tokens or _answer_budget(tokenizer, batch, tool_calls),
                                             do_sample=False, num_beams=1, pad_token_id=pad_id, eos_token_id=eos_id,
                                             stopping_criteria=stop)
                    predictions += tokenizer.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=True)
                    bar.update(len(batch))
                if tool_calls:
                    predictions = [answer_call(text) or "" for text in predictions]
                score = exact_match(predictions, [row["answer"] for row in data])
                rows.append({"task": task, "length": length, "split": split, "n": len(data), "exact_match": score})
    finally:
        model.train(was_training)
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """A markdown table of exact match: one line per (task, split), one column per length."""
    lengths = sorted({row["length"] for row in rows})
    cells: dict[tuple[str, str], dict[int, str]] = {}
    for row in rows:
        cells.setdefault((row["task"], row.get("split", "")), {})[row["length"]] = f"{100 * row['exact_match']:.1f}%"
    lines = ["| task | split | " + " | ".join(f"length {n}" for n in lengths) + " |",
             "|---|---|" + "---:|" * len(lengths)]
    for (task, split), by_length in cells.items():
        lines.append(f"| {task} | {split} | " + " | ".join(by_length.get(n, "") for n in lengths) + " |")
    return "\n".join(lines)


def write_results(rows: Sequence[dict], out_dir: Union[str, Path], *, merge: bool = False) -> tuple[Path, Path]:
    """``eval_results.json`` (``{"rows": [...]}``, read for the model card) and ``eval_results.md`` (the table).
    With ``merge``, rows already there stay, except those of the same (task, split, length), which these replace."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / RESULTS_JSON, out_dir / RESULTS_MD
    if merge and json_path.is_file():
        key = lambda r: (r["task"], r.get("split", "train"), r["length"])  # noqa: E731
        new = {key(r) for r in rows}
        rows = [r for r in json.loads(json_path.read_text())["rows"] if key(r) not in new] + list(rows)
    json_path.write_text(json.dumps({"rows": list(rows)}, indent=1) + "\n")
    md_path.write_text(format_table(rows) + "\n")
    return json_path, md_path
