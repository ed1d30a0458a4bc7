"""Evaluation (toolchain): exact match of greedy generations on the tasks of :mod:`modeling_nclama.toolchain.tasks`, per task
and length, for any causal language model of transformers.

With ``chat=True`` the prompts are asked in the tokenizer's chat template (``tasks.chat_prompt``: the question in the
user's turn, the answer generated in the assistant's), and the result rows say ``"form": "chat"``.

The rule (the same in the ``evaluate`` metric ``hub_assets/metrics/nclama_exact_match``): a text's answer is the text
up to its first newline or end-of-sequence marker, stripped; a prediction is right when its answer equals the
reference's.

:func:`evaluate_adversarial` scores the adversarial set (:mod:`modeling_nclama.toolchain.adversarial`) per case, and, for a model
with ``generate_with_trace``, counts the wrong answers written while the library's gate was open.
:func:`evaluate_against_base` checks that a converted model is its base on prose (``configuration/prose.json``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from .checkpoints import ADVERSARIAL_CHAT_RESULTS, ADVERSARIAL_RESULTS, EVAL_RESULTS
from .tasks import EVAL_LENGTHS, TASKS, chat_example, make_dataset, validate
from .tool_use import answer_call, tool_text

__all__ = ["END_MARKERS", "RESULTS_JSON", "RESULTS_MD", "ADVERSARIAL_JSON", "ADVERSARIAL_MD", "ADVERSARIAL_CHAT_JSON",
           "ADVERSARIAL_CHAT_MD", "GATE_OPEN",
           "answer_text", "exact_match", "evaluate_model", "format_table", "write_results", "evaluate_adversarial",
           "format_adversarial", "write_adversarial_results", "PROSE_PATH", "BASE_RESULTS", "load_prose",
           "evaluate_against_base"]

#: Where an answer ends: a newline, or an end-of-sequence token left in decoded text (LLaMA 3, LLaMA 3 chat, LLaMA 2,
#: the ChatML turn end of SmolLM2 and other instruct models).
END_MARKERS: tuple[str, ...] = ("\n", "<|end_of_text|>", "<|eot_id|>", "</s>", "<|im_end|>")
RESULTS_JSON = EVAL_RESULTS  # the model card's table (checkpoints.model_card) reads it
RESULTS_MD = "eval_results.md"
ADVERSARIAL_JSON = ADVERSARIAL_RESULTS  # the model card reads it too
ADVERSARIAL_MD = "adversarial_results.md"
ADVERSARIAL_CHAT_JSON, ADVERSARIAL_CHAT_MD = ADVERSARIAL_CHAT_RESULTS, "adversarial_chat_results.md"
#: A token's gate at or above this, with a library call proposed there, is the library answering.
GATE_OPEN = 0.5


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
    """Prompts tokenized as in training (with the tokenizer's special tokens, ``training.prompt_ids``) and padded on
    the left, so that every generation starts right after its own prompt."""
    from .training import prompt_ids

    ids = prompt_ids(tokenizer, list(prompts))
    width = max(map(len, ids))
    input_ids = torch.tensor([[pad_id] * (width - len(x)) + x for x in ids], dtype=torch.long)
    attention_mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], dtype=torch.long)
    return input_ids, attention_mask


def _generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, pad_id: int, eos_id: int,
              stop: StoppingCriteriaList) -> list[str]:
    """Greedy generations of a batch of prompts (left-padded), stopping at EOS or a newline: the new text only."""
    input_ids, attention_mask = _left_padded(tokenizer, prompts, pad_id)
    with torch.no_grad():
        out = model.generate(input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
                             max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad_id,
                             eos_token_id=eos_id, stopping_criteria=stop)
    return tokenizer.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=True)


def _answer_budget(tokenizer, rows: Sequence[dict], tool_calls: bool = False) -> int:
    """Enough new tokens for the longest right answer (or call) of a batch: separator, answer, the stop token (+1)."""
    texts = [(tool_text(row) if tool_calls else row["text"])[len(row["prompt"]):] for row in rows]
    return max(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]) + 2


def evaluate_model(model, tokenizer, *, tasks: Sequence[str] = TASKS, lengths: Optional[Sequence[int]] = None,
                   n_per_length: int = 50, seed: int = 0, split: str = "train", batch_size: int = 16,
                   max_new_tokens: Optional[int] = None, progress: bool = True, tool_calls: bool = False,
                   max_value: Optional[int] = None, chat: bool = False) -> list[dict]:
    """Exact match of greedy generation on ``n_per_length`` examples of every (task, length).

    Works for any causal LM whose ``generate`` takes ``input_ids``/``attention_mask`` (LlamaForCausalLM,
    NCLlamaForCausalLM): prompts are left-padded in batches, generation is greedy and stops at EOS or a newline,
    and only the new tokens are decoded. ``lengths`` (default: each task's :data:`~modeling_nclama.toolchain.tasks.EVAL_LENGTHS`)
    apply to every task; ``max_new_tokens`` defaults to what the longest right answer of each batch needs.
    With ``tool_calls`` the model is the tool-use baseline: it writes a call, which ``tool_use.answer_call``
    answers, and that answer is scored. ``max_value`` caps list items (``tasks.make_dataset``). With ``chat`` the
    questions are asked in the tokenizer's chat template (``tasks.chat_example``). Returns one row per (task,
    length): ``{task, length, split, n, exact_match}``, with ``form: "chat"`` for chat prompts."""
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
                if chat:
                    data = [chat_example(row, tokenizer) for row in data]
                predictions = []
                for start in range(0, len(data), batch_size):
                    batch = data[start:start + batch_size]
                    predictions += _generate(model, tokenizer, [row["prompt"] for row in batch],
                                             max_new_tokens or _answer_budget(tokenizer, batch, tool_calls), pad_id,
                                             eos_id, stop)
                    bar.update(len(batch))
                if tool_calls:
                    predictions = [answer_call(text) or "" for text in predictions]
                score = exact_match(predictions, [row["answer"] for row in data])
                rows.append({"task": task, "length": length, "split": split, "n": len(data), "exact_match": score,
                             **({"form": "chat"} if chat else {})})
    finally:
        model.train(was_training)
    return rows


def _split_label(row: dict) -> str:
    """The split column of a row: the template split, and "chat" for chat-form prompts."""
    return row.get("split", "") + (", chat" if row.get("form") == "chat" else "")


def format_table(rows: Sequence[dict]) -> str:
    """A markdown table of exact match: one line per (task, split and form), one column per length."""
    lengths = sorted({row["length"] for row in rows})
    cells: dict[tuple[str, str], dict[int, str]] = {}
    for row in rows:
        cells.setdefault((row["task"], _split_label(row)), {})[row["length"]] = f"{100 * row['exact_match']:.1f}%"
    lines = ["| task | split | " + " | ".join(f"length {n}" for n in lengths) + " |",
             "|---|---|" + "---:|" * len(lengths)]
    for (task, split), by_length in cells.items():
        lines.append(f"| {task} | {split} | " + " | ".join(by_length.get(n, "") for n in lengths) + " |")
    return "\n".join(lines)


def write_results(rows: Sequence[dict], out_dir: Union[str, Path], *, merge: bool = False) -> tuple[Path, Path]:
    """``eval_results.json`` (``{"rows": [...]}``, read for the model card) and ``eval_results.md`` (the table).
    With ``merge``, rows already there stay, except those of the same (task, split, form, length), which these
    replace."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / RESULTS_JSON, out_dir / RESULTS_MD
    if merge and json_path.is_file():
        key = lambda r: (r["task"], r.get("split", "train"), r.get("form", "plain"), r["length"])  # noqa: E731
        new = {key(r) for r in rows}
        rows = [r for r in json.loads(json_path.read_text())["rows"] if key(r) not in new] + list(rows)
    json_path.write_text(json.dumps({"rows": list(rows)}, indent=1) + "\n")
    md_path.write_text(format_table(rows) + "\n")
    return json_path, md_path


# ---------------------------------------------------------------------------------------------------- adversarial
#: New tokens for a row with nothing to compute: enough to see whether the model writes an answer anyway.
NOTHING_BUDGET = 16


def _row_budget(tokenizer, row: dict) -> int:
    """What a row's right answer needs (separator, answer, the stop token, +1), as :func:`_answer_budget`."""
    if row.get("answer") is None:
        return NOTHING_BUDGET
    separator = "" if row["prompt"].endswith("=") else " "
    return len(tokenizer(separator + row["answer"], add_special_tokens=False)["input_ids"]) + 2


def _gate_open_rows(trace: Sequence[dict]) -> list[dict]:
    """The trace rows (one per generated token) where the library answered: its weight in the token's mixture (the
    gate times the mass its calls' results propose; a failed call proposes nothing) at least :data:`GATE_OPEN`."""
    return [row for row in trace if float(row.get("library_weight", 0.0)) >= GATE_OPEN and row.get("calls")]


def _traces(model) -> bool:
    return callable(getattr(model, "generate_with_trace", None)) and getattr(model, "library", True) is not None


def evaluate_adversarial(model, tokenizer, rows: Sequence[dict], *, max_new_tokens: Optional[int] = None,
                         progress: bool = True, batch_size: int = 16, chat: bool = False) -> dict:
    """Greedy generation on the rows of the adversarial set (:mod:`modeling_nclama.toolchain.adversarial`), scored per case.

    Each row is generated as :func:`evaluate_model` generates (greedy, stops at EOS or a newline; ``max_new_tokens``
    defaults to what the row's right answer needs, :data:`NOTHING_BUDGET` where there is none). A model with
    ``generate_with_trace`` (an NCLlama with a library) generates one row at a time with its trace, whose rows (one
    per generated token) carry ``gate`` and ``calls``; other models generate in batches of ``batch_size`` and have
    no gate. A row's ``gate_open``: the library answered some generated token (``library_weight``, the gate as the
    mixture applies it, >= :data:`GATE_OPEN`; a raw gate that is open while the calls failed leaves the token to the
    language model, and the trace's ``no_call_reason`` says so).
    ``wrong_with_gate_open``: the answer is wrong (a computable row not matched exactly, or a row with nothing to
    compute answered at all) and the gate was open. With ``chat`` every prompt is asked in the tokenizer's chat
    template (``tasks.chat_prompt``); the rows keep their plain prompt.

    Returns ``{"cases": {case: {n, computable, exact, exact_match, answered, gate_open, wrong_with_gate_open}},
    "n", "computable_exact_match", "training_wordings_exact_match", "training_wordings_computable",
    "wrong_with_gate_open", "traced", "rows": [{prompt, case, task, computable, wording, expected, generated, exact,
    gate_open, wrong_with_gate_open, max_gate, programs, no_call_reason}]}`` (``training_wordings_*``: the
    computable rows a training template wrote, the issue's target; the empty-list case also asks every held-out
    bracketed template once)
    (``exact`` is None for a row with nothing to compute; ``programs``: the top call's program at each gate-open
    token; ``no_call_reason``: the first the trace gives)."""
    rows = list(rows)
    if not rows:
        raise ValueError("no adversarial rows to evaluate")
    from .tasks import chat_prompt
    from .training import prompt_ids

    asked = [chat_prompt(row["prompt"], tokenizer) if chat else row["prompt"] for row in rows]
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size!r}")
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    stop = StoppingCriteriaList([_StopAtTokens(_newline_tokens(tokenizer))])
    traced = _traces(model)
    generated: list[str] = []
    traces: list[Optional[list[dict]]] = []
    was_training = model.training
    model.eval()
    try:
        with tqdm(total=len(rows), desc="adversarial", unit="prompt", disable=not progress) as bar:
            if traced:
                for row, prompt in zip(rows, asked):
                    ids = prompt_ids(tokenizer, [prompt])[0]
                    input_ids = torch.tensor([ids], dtype=torch.long, device=model.device)
                    with torch.no_grad():
                        sequence, trace = model.generate_with_trace(
                            input_ids, attention_mask=torch.ones_like(input_ids), max_trace_rows=1,
                            max_new_tokens=max_new_tokens or _row_budget(tokenizer, row), do_sample=False,
                            num_beams=1, pad_token_id=pad_id, eos_token_id=eos_id, stopping_criteria=stop)
                    generated.append(tokenizer.decode(sequence[0, len(ids):], skip_special_tokens=True))
                    traces.append(list(trace))
                    bar.update(1)
            else:
                for start in range(0, len(rows), batch_size):
                    batch = rows[start:start + batch_size]
                    budget = max_new_tokens or max(_row_budget(tokenizer, row) for row in batch)
                    generated += _generate(model, tokenizer, asked[start:start + batch_size], budget, pad_id,
                                           eos_id, stop)
                    traces += [None] * len(batch)
                    bar.update(len(batch))
    finally:
        model.train(was_training)

    scored, cases = [], {}
    for row, text, trace in zip(rows, generated, traces):
        answer = answer_text(text)
        computable = bool(row.get("computable", row.get("answer") is not None))
        opened = _gate_open_rows(trace or [])
        exact = answer == answer_text(row["answer"]) if computable else None
        wrong = (not exact) if computable else bool(answer)
        reasons = [t["no_call_reason"] for t in trace or [] if t.get("no_call_reason")]
        scored.append({
            "prompt": row["prompt"], "case": row.get("case"), "task": row.get("task"), "computable": computable,
            "wording": row.get("wording"),
            "expected": row.get("answer"), "generated": answer, "exact": exact, "gate_open": bool(opened),
            "wrong_with_gate_open": bool(wrong and opened),
            "max_gate": max((float(t.get("gate", 0.0)) for t in trace), default=None) if trace is not None else None,
            "programs": [max(t["calls"], key=lambda c: c.get("probability", 0.0)).get("program") for t in opened],
            "no_call_reason": reasons[0] if reasons else None,
        })
    for record in scored:
        case = cases.setdefault(record["case"], {"n": 0, "computable": 0, "exact": 0, "exact_match": None,
                                                 "answered": 0, "gate_open": 0, "wrong_with_gate_open": 0})
        case["n"] += 1
        case["computable"] += record["computable"]
        case["exact"] += bool(record["exact"])
        case["answered"] += bool(record["generated"]) and not record["computable"]
        case["gate_open"] += record["gate_open"]
        case["wrong_with_gate_open"] += record["wrong_with_gate_open"]
    for case in cases.values():
        case["exact_match"] = case["exact"] / case["computable"] if case["computable"] else None
    computable = sum(c["computable"] for c in cases.values())
    trained = [r for r in scored if r["computable"] and r["wording"] != "heldout"]
    return {"cases": cases, "n": len(scored),
            "computable_exact_match": sum(c["exact"] for c in cases.values()) / computable if computable else None,
            "training_wordings_exact_match": sum(r["exact"] for r in trained) / len(trained) if trained else None,
            "training_wordings_computable": len(trained),
            "wrong_with_gate_open": sum(c["wrong_with_gate_open"] for c in cases.values()), "traced": traced,
            "form": "chat" if chat else "plain", "rows": scored}


def _cell(value) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", "\\n")


def format_adversarial(result: dict) -> str:
    """Markdown: a summary table (one line per case), then a table of every case's rows."""
    def percent(value):
        return "" if value is None else f"{100 * value:.1f}%"

    lines = ["| case | n | computable | exact match | answered (nothing to compute) | gate open | wrong with gate open |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, case in result["cases"].items():
        lines.append(f"| {name} | {case['n']} | {case['computable']} | {percent(case['exact_match'])} | "
                     f"{case['answered']} | {case['gate_open']} | {case['wrong_with_gate_open']} |")
    lines.append(f"| all | {result['n']} | {sum(c['computable'] for c in result['cases'].values())} | "
                 f"{percent(result['computable_exact_match'])} | "
                 f"{sum(c['answered'] for c in result['cases'].values())} | "
                 f"{sum(c['gate_open'] for c in result['cases'].values())} | {result['wrong_with_gate_open']} |")
    if result.get("training_wordings_exact_match") is not None:
        trained = result["training_wordings_computable"]
        exact = round(result["training_wordings_exact_match"] * trained)
        lines += ["", f"Computable rows in training wordings: {percent(result['training_wordings_exact_match'])} "
                      f"({exact} of {trained})."]
    if not result.get("traced", True):
        lines += ["", "(the model has no trace: no gate was read)"]
    for name in result["cases"]:
        lines += ["", f"## {name}", "", "| prompt | expected | generated | exact | gate open | max gate | programs |",
                  "|---|---|---|---|---|---:|---|"]
        for row in result["rows"]:
            if row["case"] == name:
                exact = "" if row["exact"] is None else ("yes" if row["exact"] else "no")
                gate = "" if row["max_gate"] is None else f"{row['max_gate']:.2f}"
                lines.append(f"| {_cell(row['prompt'])} | {_cell(row['expected'])} | {_cell(row['generated'])} | "
                             f"{exact} | {'yes' if row['gate_open'] else 'no'} | {gate} | "
                             f"{_cell(', '.join(dict.fromkeys(p for p in row['programs'] if p)))} |")
    return "\n".join(lines)


def write_adversarial_results(result: dict, out_dir: Union[str, Path]) -> tuple[Path, Path]:
    """``adversarial_results.json`` (the result of :func:`evaluate_adversarial`) and ``adversarial_results.md``;
    ``adversarial_chat_results.*`` for a result of chat prompts, so that both forms' results stay side by side."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = (ADVERSARIAL_CHAT_JSON, ADVERSARIAL_CHAT_MD) if result.get("form") == "chat" else (ADVERSARIAL_JSON,
                                                                                               ADVERSARIAL_MD)
    json_path, md_path = out_dir / names[0], out_dir / names[1]
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    md_path.write_text(format_adversarial(result) + "\n")
    return json_path, md_path


# ---------------------------------------------------------------------- against the base
PROSE_PATH = Path(__file__).resolve().parents[2] / "configuration" / "prose.json"
BASE_RESULTS = "base_results.json"


def load_prose(path: Union[str, Path, None] = None) -> dict:
    """The prose set (``configuration/prose.json`` by default): ``prompts``, ``chat`` questions and a ``passage``."""
    path = Path(path) if path is not None else PROSE_PATH
    prose = json.loads(path.read_text())
    missing = [key for key in ("prompts", "chat", "passage") if key not in prose]
    if missing:
        raise ValueError(f"{path}: the prose set needs {', '.join(missing)}")
    return prose


def evaluate_against_base(model, base, tokenizer, *, prose: Optional[dict] = None, max_new_tokens: int = 16,
                          batch_size: int = 16, progress: bool = True) -> dict:
    """Is ``model`` its ``base`` on text with nothing to compute? Greedy continuations (``max_new_tokens`` each, no
    stop at a newline) of the prose set's prompts, and of its chat questions in the tokenizer's chat template where
    there is one, compared token for token; and the perplexity of its passage under each model.

    Returns ``{"prompts", "identical", "differing": [{prompt, model, base}], "perplexity": {model, base, ratio},
    "max_new_tokens"}``."""
    from .tasks import chat_prompt

    prose = prose or load_prose()
    prompts = list(prose["prompts"])
    if getattr(tokenizer, "chat_template", None):
        prompts += [chat_prompt(question, tokenizer) for question in prose["chat"]]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    identical, differing = 0, []
    was_training = model.training, base.training
    model.eval(), base.eval()
    try:
        with tqdm(total=len(prompts), desc="against the base", unit="prompt", disable=not progress) as bar:
            for start in range(0, len(prompts), batch_size):
                batch = prompts[start:start + batch_size]
                input_ids, attention_mask = _left_padded(tokenizer, batch, pad_id)
                settings = dict(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                min_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad_id)
                with torch.no_grad():
                    ours, theirs = model.generate(**settings), base.generate(**settings)
                for prompt, a, b in zip(batch, ours[:, input_ids.shape[1]:], theirs[:, input_ids.shape[1]:]):
                    if torch.equal(a, b):
                        identical += 1
                    else:
                        differing.append({"prompt": prompt, "model": tokenizer.decode(a), "base": tokenizer.decode(b)})
                bar.update(len(batch))
            ids = torch.tensor([tokenizer(prose["passage"])["input_ids"]])
            with torch.no_grad():
                # from the logits, not the forward's loss: an NCLlama's loss may carry its heads' training terms
                perplexity = {name: float(torch.exp(torch.nn.functional.cross_entropy(
                                  m(input_ids=ids).logits[0, :-1].float(), ids[0, 1:])))
                              for name, m in (("model", model), ("base", base))}
    finally:
        model.train(was_training[0]), base.train(was_training[1])
    perplexity["ratio"] = perplexity["model"] / perplexity["base"]
    return {"prompts": len(prompts), "identical": identical, "differing": differing, "perplexity": perplexity,
            "max_new_tokens": max_new_tokens}
