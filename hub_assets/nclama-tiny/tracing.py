"""Tracing: what the interpreter did for each generated token (the gate, the call site answered, the top calls with
their operands, results, machine steps and status, and why the library did not answer where it did not), recomputed
in one forward pass (``NCLlamaForCausalLM.explain`` and ``generate_with_trace``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch

from .calls import CallTable, LibraryCall, _describe, _plain, call_budget
from .library import LibraryError
from .machine import MachineError

if TYPE_CHECKING:
    from .modeling_nclama import NCLlamaForCausalLM


@dataclass
class RecordedCall:
    """One of the top-k calls of a position, as ``explain`` reports it."""

    call: LibraryCall
    operands: list  # the Operand each parameter read
    probability: float
    tokens: list[int]
    problem: Optional[str] = None  # why it was not run, if the machine cannot take it


@torch.no_grad()
def explain(model: "NCLlamaForCausalLM", sequence: torch.LongTensor, prompt_length: int, max_trace_rows: int = 200) -> list[dict]:
    """What the interpreter did for each token of ``sequence`` after the first ``prompt_length`` (see
    ``generate_with_trace``). Recomputed in one forward pass, which equals what generation computed."""
    if model.library is None:
        raise LibraryError("the model has no library attached")
    mode = model.config.nc_mode
    ids = sequence.tolist()
    record: dict = {}
    outputs, interpreted = model._run_decoder(True, None, record, input_ids=sequence[None], use_cache=False)
    gate = interpreted.gate[0]
    # what each side would say alone: the language model's distribution, and the library's proposal normalized
    lm = torch.softmax(model.lm_head(outputs.last_hidden_state[0]).float(), -1)  # [T, vocab]
    lm_probability, lm_token = lm.max(-1)
    library_top, library_token = interpreted.proposal[0].max(-1)
    library_probability = library_top / interpreted.mass[0].clamp_min(1e-30)
    rows = []
    done: dict = {}  # each distinct call runs (and is traced) once, however many tokens answer its site

    def run(name: str, args: list, mode: Optional[str] = None, max_steps: Optional[int] = None):
        """``run_batch`` of one call (``mode`` None), else ``run`` with its trace in ``mode``; remembered."""
        key = (name, repr(args), mode, max_steps)
        if key not in done:
            try:
                done[key] = (model.library.run_batch(name, [args], max_steps=max_steps) if mode is None
                             else model.library.run(name, *args, mode=mode, trace=True, max_steps=max_steps))
            except MachineError as error:
                done[key] = error
        if isinstance(done[key], MachineError):
            raise done[key]
        return done[key]

    for t in range(prompt_length - 1, len(ids) - 1):
        p_site, offset = interpreted.site_probs[0, t].max(-1)
        site = t - int(offset)
        calls = []
        for recorded in record.get((0, site), []):
            name, args = model.config.nc_programs[recorded.call.program], _plain(recorded.call.arguments)
            kinds = [kind for _, kind in model.library[name].params]
            budget = call_budget(kinds, recorded.call.arguments, model.config.nc_max_steps)
            if recorded.problem is not None:
                result, steps, status = None, 0, recorded.problem
            elif mode == "hard":
                if recorded.call in model.calls.outcomes:  # run while the sequence was read: not again
                    result, steps, status, budget = model.calls.outcomes[recorded.call]
                else:
                    ran = run(name, args, max_steps=budget)
                    result, steps, status = ran.values[0], ran.steps[0], ran.status[0]
                if status == "max_steps":
                    status = f"max_steps: did not finish within its budget of {budget} steps"
            else:  # what the soft machine's most likely result is, and its (expected) steps
                try:
                    result, trace = run(name, args, "soft", model.config.nc_max_steps)
                    steps, status = len(trace.steps), "ok"
                except MachineError as error:
                    result, steps, status = None, None, str(error)
            calls.append({
                "program": name,
                "probability": recorded.probability,
                "operands": [
                    {"start": o.start, "end": o.end, "text": " ".join(o.items)} if o is not None else {"value": a}
                    for o, a in zip(recorded.operands, args)
                ],
                "arguments": args,
                "result": result,
                "result_tokens": recorded.tokens,
                "steps": steps,
                "status": status,
            })
        row = {
            "position": t + 1,
            "token": ids[t + 1],
            "gate": float(gate[t]),
            # the gate as the mixture applies it (g m in _fuse): a call that failed or did not run proposes
            # nothing, so an open gate with no result leaves the token to the language model
            "library_weight": min(float(gate[t] * interpreted.mass[0, t]), 1.0),
            "site": site,
            "site_probability": float(p_site),
            "offset": t - site,
            "calls": calls,
            # the language model's own choice and its probability, and the probability it gave the chosen token
            "lm_token": int(lm_token[t]),
            "lm_probability": float(lm_probability[t]),
            "lm_probability_of_token": float(lm[t, ids[t + 1]]),
            # the library's choice and its probability within the proposal (None where it proposes nothing)
            "library_token": int(library_token[t]) if float(interpreted.mass[0, t]) > 0 else None,
            "library_probability": float(library_probability[t]) if float(interpreted.mass[0, t]) > 0 else None,
        }
        reason = no_call_reason(model.calls, ids[: site + 1], calls)
        if reason is not None:
            row["no_call_reason"] = reason
        if calls and calls[0]["status"] == "ok":
            _, trace = run(calls[0]["program"], calls[0]["arguments"], mode, model.config.nc_max_steps)
            row["machine_trace"] = trace.format(max_rows=max_trace_rows)
        rows.append(row)
    return rows


def no_call_reason(calls_table: CallTable, prefix: list[int], calls: list[dict]) -> Optional[str]:
    """Why the library does not answer at a call site whose prefix holds operands, or None where it answers (or
    where there is nothing to read): no program takes operands of these kinds, or the likeliest call could not
    run or failed."""
    operands = calls_table.operands(prefix)
    if not operands:
        return None
    if not calls:
        described = ", ".join(_describe(o) for o in operands[-3:])
        return f"no library program takes these operands ({described}): the language model answered alone"
    top = calls[0]
    if top["status"] == "ok":
        return None
    return f"the library could not answer ({top['program']}: {top['status']}): the language model answered alone"
