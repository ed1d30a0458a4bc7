"""Which hidden states of a pretrained base tell the task of a wording it was never trained on (toolchain):
linear probes, trained on the training wordings' prompts, asked the task of the held-out wordings' prompts.

What the call reader of a converted model should read (``nc_call_reader``, ``nc_call_layer``) is measured here
before any training: per layer, the state at the call site (the prompt's last token, what ``"hidden"`` reads) and
the mean of the normalized states of the prompt's words (what ``"sentence"`` reads; digits and list punctuation
are no words). ``nclama probe-calls --base out/smollm2`` prints the table.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .tasks import TASKS, chat_prompt, make_dataset

__all__ = ["READINGS", "read_states", "probe_calls", "format_probes"]

READINGS = ("site", "words")


def read_states(states: torch.Tensor, words: torch.Tensor, reading: str) -> torch.Tensor:
    """What a call reader reads of one prompt's states [T, d] (``words`` [T]: which positions are words): ``"site"``
    the last position's state, ``"words"`` the mean of the words' states, each layer-normalized."""
    normed = torch.nn.functional.layer_norm(states.float(), states.shape[-1:])
    if reading == "site":
        return normed[-1]
    if reading == "words":
        if not words.any():
            raise ValueError("the prompt has no words to read")
        return normed[words].mean(0)
    raise ValueError(f"reading must be one of {READINGS}, got {reading!r}")


def _features(model, tokenizer, rows: Sequence[dict], layers: Sequence[int], chat: bool, words_of) -> dict:
    out = {(layer, reading): [] for layer in layers for reading in READINGS}
    for row in rows:
        text = chat_prompt(row["prompt"], tokenizer) if chat else row["prompt"]
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        begin = ids.shape[1] - len(prompt) if not chat else max(
            i for i in range(ids.shape[1] - len(prompt) + 1) if ids[0, i : i + len(prompt)].tolist() == prompt)
        with torch.no_grad():
            hidden = model(ids, output_hidden_states=True).hidden_states
        words = torch.zeros(ids.shape[1], dtype=torch.bool)
        words[begin : begin + len(prompt)] = words_of(ids[0, begin : begin + len(prompt)])
        for layer in layers:  # hidden_states[i + 1] is layer i's output; the last is after the final norm
            states = hidden[layer + 1][0] if layer >= 0 else hidden[len(hidden) + layer][0]
            for reading in READINGS:
                out[(layer, reading)].append(read_states(states, words, reading))
    return {key: torch.stack(value) for key, value in out.items()}


def _fit(x: torch.Tensor, y: torch.Tensor, classes: int, steps: int, seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    probe = torch.nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(probe(x), y).backward()
        optimizer.step()
    return probe


def probe_calls(model, tokenizer, *, layers: Sequence[int], n_train: int = 330, n_heldout: int = 220,
                forms: Sequence[str] = ("plain", "chat"), steps: int = 300, seed: int = 0,
                tasks: Sequence[str] = TASKS, number_tokens: Optional[set] = None) -> list[dict]:
    """Per form, decoder layer (0-based, as ``nc_call_layer`` counts; -1: the last, after the final norm, as ``nc_layer:
    -1`` reads it) and reading: a linear probe of the task, trained (Adam, full batch, ``steps`` steps) on ``n_train``
    training wordings' prompts and scored on ``n_heldout`` held-out wordings' prompts (``tasks.make_dataset``, seeds 1
    and 2). ``number_tokens``: the ids that are no words (default: every token whose text holds a digit, a bracket, a
    comma or a minus). Rows ``{form, layer, reading, train, heldout}`` (accuracies)."""
    if not layers:
        raise ValueError("give at least one layer")
    if number_tokens is None:
        number_tokens = {i for t, i in tokenizer.get_vocab().items() if any(c.isdigit() or c in "[],-" for c in t)}
    no_words = torch.tensor(sorted(number_tokens), dtype=torch.long)
    words_of = lambda ids: ~torch.isin(ids, no_words)  # noqa: E731
    train = make_dataset(list(tasks), n_train, seed=1, split="train").to_list()
    heldout = make_dataset(list(tasks), n_heldout, seed=2, split="heldout").to_list()
    y_train = torch.tensor([list(tasks).index(row["task"]) for row in train])
    y_heldout = torch.tensor([list(tasks).index(row["task"]) for row in heldout])
    model.eval()
    rows = []
    for form in forms:
        if form not in ("plain", "chat"):
            raise ValueError(f"forms are 'plain' and 'chat', got {form!r}")
        seen = _features(model, tokenizer, train, layers, form == "chat", words_of)
        asked = _features(model, tokenizer, heldout, layers, form == "chat", words_of)
        for layer in layers:
            for reading in READINGS:
                probe = _fit(seen[(layer, reading)], y_train, len(tasks), steps, seed)
                with torch.no_grad():
                    train_hits = probe(seen[(layer, reading)]).argmax(-1) == y_train
                    heldout_hits = probe(asked[(layer, reading)]).argmax(-1) == y_heldout
                rows.append({"form": form, "layer": layer, "reading": reading,
                             "train": float(train_hits.float().mean()), "heldout": float(heldout_hits.float().mean())})
    return rows


def format_probes(rows: Sequence[dict]) -> str:
    """Markdown: one line per form, layer and reading."""
    lines = ["| form | layer | reading | training wordings | held-out wordings |", "|---|---:|---|---:|---:|"]
    lines += [f"| {r['form']} | {r['layer']} | {r['reading']} | {100 * r['train']:.0f}% | {100 * r['heldout']:.0f}% |"
              for r in rows]
    return "\n".join(lines)
