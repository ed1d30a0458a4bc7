"""What the Space computes, inside a worker process: each offered model's generation with its trace (the prompt as
typed, or in the model's chat template) and its two comparison answers, library runs and compilation. Everything
here returns plain JSON-able data.

Bad input raises ``ValueError`` with a message meant for the person (or API client) who sent it; the worker passes
it on as the request's error.
"""
from __future__ import annotations

import ast
import functools
import queue
import threading
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.generation.streamers import BaseStreamer

from modeling_nclama import Library, compile_library
from modeling_nclama.toolchain.evaluation import answer_text
from modeling_nclama.toolchain.tasks import CANONICAL, chat_prompt
from modeling_nclama.toolchain.training import prompt_ids
from settings import LIMITS

MODES = ("hard", "soft")

#: Questions as a person would type them to a chat model (one of them in a held-out wording): the examples of a
#: model that can be asked in its chat template.
CHAT_EXAMPLES = [
    "What is 81273 plus 4406?",
    "What is 734 times 58?",
    "Is 81273 less than 4406?",
    "Put [5, 3, 9, 1] in increasing order.",
    "What is the largest number in [5, 3, 9, 1, 1200]?",
    "What is the sum of [5, 3, 9, 1]?",
]


class Engine:
    """The offered NCLlama models (by name, the default first) and the default model's library (the Library tab).

    The default model loads at start (its library serves the Library tab); every other network, the first time a
    request needs it."""

    def __init__(self, models: dict[str, dict]):
        torch.set_num_threads(1)  # small models: intra-op threads cost more than they give
        if not models:
            raise ValueError("no model to serve")
        self.models = {name: ServedModel(name, **folders) for name, folders in models.items()}
        self.default = next(iter(self.models.values()))
        self.library = self.default.model.library

    def info(self) -> dict:
        """What the web process shows without asking again: the models, the examples, the default's programs."""
        called = self.default.model.config.nc_programs
        return {
            "models": {name: model.info() for name, model in self.models.items()},
            "examples": [prompt for prompt, _ in CANONICAL],
            "chat_examples": CHAT_EXAMPLES,
            "programs": [
                {
                    "name": p.name,
                    "params": [list(param) for param in p.params],
                    "returns": p.returns,
                    "source": p.source,
                    "assembly": p.assembly(),
                    "called_by_model": p.name in called,
                }
                for p in self.library.programs
            ],
        }

    def generate(self, prompt: str, max_new_tokens: int, model: str, chat: bool) -> Iterator[dict]:
        """The answer of ``model`` as it grows, one update per generated token, then the whole trace (``done``)."""
        for update in self._model(model).generate(prompt, max_new_tokens, chat):
            yield json_safe(update)

    def compare(self, prompt: str, max_new_tokens: int, model: str, chat: bool) -> dict:
        """The answers of ``model``'s plain baseline and of ``model`` with its library switched off."""
        return self._model(model).compare(prompt, max_new_tokens, chat)

    def _model(self, name: Any) -> "ServedModel":
        if not isinstance(name, str) or name not in self.models:
            raise ValueError(f"no model {name!r} here; the models offered are: {', '.join(self.models)}")
        return self.models[name]

    # ------------------------------------------------------------------ library and compiler
    def run_program(self, name: Any, arguments: Any, mode: Any, max_steps: Any) -> dict:
        """Run a program of the default model's library on arguments written as Python literals (``84, 36``)."""
        if not isinstance(name, str) or name not in self.library:
            raise ValueError(f"no program {name!r} in the library; it has: {', '.join(self.library.names)}")
        return json_safe(_run(self.library, name, parse_arguments(arguments), mode, max_steps))

    def compile(self, source: Any, call: Any, mode: Any, max_steps: Any) -> dict:
        """Compile every function of ``source`` (AST only: never executed) and run ``call`` (``triangle(10)``)."""
        check_source(source)
        name, args = parse_call(call)
        library = compile_library(source, value_size=LIMITS.compile_value_size)
        lines = sum(p.num_lines for p in library.programs)
        if len(library) > LIMITS.functions:
            raise ValueError(f"the source defines {len(library)} functions; at most {LIMITS.functions} are allowed")
        if lines > LIMITS.program_lines:
            raise ValueError(
                f"the program compiles to {lines} instructions; at most {LIMITS.program_lines} are allowed")
        if name not in library:
            raise ValueError(
                f"the call names {name!r}, which the source does not define (it defines: {', '.join(library.names)})")
        run = _run(library, name, args, mode, max_steps)
        run["functions"] = [
            {"name": p.name, "params": [list(x) for x in p.params], "returns": p.returns, "lines": p.num_lines,
             "assembly": p.assembly()}
            for p in library.programs
        ]
        return json_safe(run)


class ServedModel:
    """One NCLlama model, the same model with its library switched off, and its plain baseline.

    The tokenizer and the configuration load at once (they are small, and say whether the model has a chat
    template); the weights load when a request first needs them."""

    def __init__(self, name: str, model: str, baseline: str):
        self.name, self.source, self.baseline_source = name, model, baseline
        self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=True)
        self.config = AutoConfig.from_pretrained(model, trust_remote_code=True)
        if not hasattr(self.config, "nc_mode"):
            raise ValueError(f"{model} is not an NCLlama model")

    @property
    def chat(self) -> bool:
        """Whether prompts can be asked in the tokenizer's chat template."""
        return bool(getattr(self.tokenizer, "chat_template", None))

    def info(self) -> dict:
        return {"model": shown_name(self.source), "baseline": shown_name(self.baseline_source), "chat": self.chat,
                "mode": self.config.nc_mode, "value_size": self.config.nc_value_size}

    @functools.cached_property
    def model(self):
        model = AutoModelForCausalLM.from_pretrained(self.source, trust_remote_code=True).eval()
        if getattr(model, "library", None) is None:
            raise ValueError(f"{self.source} is not an NCLlama model with a library")
        return model

    @functools.cached_property
    def library_off(self):
        # The runtime calls the library only while one is attached: a second copy without it is the same trained
        # network with the gate shut (no interpreter, no residual injection), its language model answering alone.
        model = AutoModelForCausalLM.from_pretrained(self.source, trust_remote_code=True).eval()
        model.library = None
        return model

    @functools.cached_property
    def baseline(self) -> tuple:
        """The plain baseline and its tokenizer."""
        return (AutoModelForCausalLM.from_pretrained(self.baseline_source).eval(),
                AutoTokenizer.from_pretrained(self.baseline_source))

    # ------------------------------------------------------------------ generation
    def generate(self, prompt: str, max_new_tokens: int, chat: bool) -> Iterator[dict]:
        """The answer as it grows, one update per generated token, then the whole trace (``done``)."""
        ids, max_new_tokens = _prompt_ids(self.tokenizer, prompt, max_new_tokens, chat, self.name)
        model = self.model
        streamer = _TokenQueue()
        outcome: dict = {}

        def work() -> None:
            try:
                outcome["sequence"] = model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                    do_sample=False, streamer=streamer, pad_token_id=_pad_id(self.tokenizer),
                )
            except BaseException as error:  # handed to the caller below
                outcome["error"] = error
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        new: list[int] = []
        while (token := streamer.tokens.get()) is not None:
            new.append(token)
            yield self._partial(prompt, chat, ids[0].tolist(), new)
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        yield self._traced(prompt, chat, outcome["sequence"][0], ids.shape[1])

    def compare(self, prompt: str, max_new_tokens: int, chat: bool) -> dict:
        """The answers of the plain baseline and of this model with its library switched off."""
        library_off = _answer(self.library_off, self.tokenizer, prompt, max_new_tokens, chat, self.name)
        baseline, baseline_tokenizer = self.baseline
        return {"baseline": _answer(baseline, baseline_tokenizer, prompt, max_new_tokens, chat,
                                    f"the baseline {self.baseline_source}"),
                "library_off": library_off}

    def _texts(self, ids: list[int]) -> list[str]:
        return [self.tokenizer.decode([i]) for i in ids]

    def _partial(self, prompt: str, chat: bool, asked_ids: list[int], new: list[int]) -> dict:
        return {
            "model": self.name,
            "prompt": prompt,
            "chat": chat,
            "answer": answer_text(self.tokenizer.decode(new, skip_special_tokens=True)),
            "prompt_length": len(asked_ids),
            "sequence": self._texts(asked_ids + new),
            "tokens": [{"position": len(asked_ids) + i, "token": t, "text": text}
                       for i, (t, text) in enumerate(zip(new, self._texts(new)))],
            "machines": {},
            "done": False,
        }

    def _traced(self, prompt: str, chat: bool, sequence: torch.Tensor, prompt_length: int) -> dict:
        """Per generated token, what ``explain`` reports (less its text step table), with token texts, the calls'
        results as text, each operand's parameter name, and the key of the top call's machine trace in
        ``machines`` (one traced run per distinct call)."""
        ids = sequence.tolist()
        out = self._partial(prompt, chat, ids[:prompt_length], ids[prompt_length:])
        rows = self.model.explain(sequence, prompt_length, max_trace_rows=1)
        library = self.model.library
        for row, token in zip(rows, out["tokens"]):
            row.pop("machine_trace", None)
            row["text"] = token["text"]
            row["lm_text"] = self.tokenizer.decode([row["lm_token"]])
            row["library_text"] = None if row["library_token"] is None else self.tokenizer.decode([row["library_token"]])
            for call in row["calls"]:
                params = [name for name, _ in library[call["program"]].params]
                for param, operand in zip(params, call["operands"]):
                    operand["param"] = param
                call["result_text"] = self.tokenizer.decode(call.pop("result_tokens"), skip_special_tokens=True)
            row["machine"] = self._machine_for(row["calls"][0], out["machines"]) if row["calls"] else None
        out["tokens"], out["done"] = rows, True
        return out

    def _machine_for(self, call: dict, machines: dict) -> Optional[str]:
        if call["status"] != "ok":
            return None
        key = f"{call['program']}{call['arguments']}"
        if key not in machines:
            mode = self.model.config.nc_mode
            steps = self.model.config.nc_max_steps if mode == "hard" else LIMITS.soft_steps
            try:
                _, trace = self.model.library.run(call["program"], *call["arguments"], mode=mode, trace=True,
                                                  max_steps=steps)
            except RuntimeError as error:  # the soft machine may not halt within the Space's cap
                machines[key] = {"error": str(error)}
            else:
                machines[key] = trace_json(trace, call["program"], call["arguments"], call["result"])
        return key


def _answer(model, tokenizer, prompt: str, max_new_tokens: int, chat: bool, asked: str) -> str:
    ids, max_new_tokens = _prompt_ids(tokenizer, prompt, max_new_tokens, chat, asked)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=_pad_id(tokenizer))
    return answer_text(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))


def _prompt_ids(tokenizer, prompt: Any, max_new_tokens: Any, chat: Any, asked: str) -> tuple[torch.Tensor, int]:
    """The prompt's token ids as the model was trained on them (in the chat template if ``chat``), checked against
    the limits; ``asked`` names the model for a refusal."""
    check_prompt(prompt)
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, 1, LIMITS.new_tokens)
    if not isinstance(chat, bool):
        raise ValueError(f"chat must be true or false, got {chat!r}")
    if chat and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{asked} has no chat template: ask without it")
    ids = torch.tensor(prompt_ids(tokenizer, [chat_prompt(prompt, tokenizer) if chat else prompt]))
    if ids.shape[1] > LIMITS.prompt_tokens:
        form = " in the chat template" if chat else ""
        raise ValueError(
            f"the prompt is {ids.shape[1]} tokens long{form}; at most {LIMITS.prompt_tokens} are allowed")
    return ids, max_new_tokens


def _pad_id(tokenizer) -> Optional[int]:
    """The padding token, or the end of sequence for a tokenizer without one (as generation would take it)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


class _TokenQueue(BaseStreamer):
    """Receives each generated token from ``generate`` (the first ``put`` is the prompt)."""

    def __init__(self):
        self.tokens: queue.Queue = queue.Queue()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.tokens.put(token)

    def end(self) -> None:
        self.tokens.put(None)


def _run(library, name: str, args: list, mode: Any, max_steps: Any) -> dict:
    if mode not in MODES:
        raise ValueError(f"mode must be 'hard' or 'soft', got {mode!r}")
    cap = LIMITS.hard_steps if mode == "hard" else LIMITS.soft_steps
    max_steps = cap if max_steps is None else check_int("max_steps", max_steps, 1, cap, f" in {mode} mode")
    try:
        result, trace = library.run(name, *args, mode=mode, trace=True, max_steps=max_steps)
    except TypeError as error:  # wrong number or kind of arguments
        raise ValueError(str(error)) from None
    except RuntimeError as error:  # MachineError (of whichever copy of the runtime made the library)
        raise ValueError(f"the machine stopped: {error}") from None
    return {"program": name, "arguments": args, "mode": mode, "result": result, "steps": len(trace.steps),
            "machine": trace_json(trace, name, args, result)}


def shown_name(source: str) -> str:
    """What the page calls a model: a Hub repo id as it is, a local folder by its name (never the machine's path)."""
    path = Path(source)
    return path.name if path.is_absolute() or path.exists() else source


JSON_INT = 2**53 - 1  # the largest int a browser reads exactly from JSON (and orjson writes at most 64 bits)


def json_safe(value: Any) -> Any:
    """``value`` with every int a browser would not read exactly (a 40-digit sum, its operands) as its decimal
    string."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) <= JSON_INT else str(value)
    if isinstance(value, dict):
        return {key: json_safe(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def trace_json(trace, program: str, arguments: list, result: Any) -> dict:
    """A machine trace as JSON: per step (the first ``LIMITS.trace_rows``) the line, the instruction and the
    registers and memory after it (the most likely values and the registers' probabilities in soft mode)."""
    soft = trace.mode == "soft"
    rows = []
    for s in trace.steps[: LIMITS.trace_rows]:
        row = {
            "step": s.step, "program": s.program, "line": s.line, "instruction": s.instruction,
            "probability": s.probability,
            "registers": {k: v[0] for k, v in s.registers.items()} if soft else dict(s.registers),
            "memory": s.memory[: LIMITS.memory_cells],
        }
        if soft:
            row["register_probabilities"] = {k: v[1] for k, v in s.registers.items()}
        rows.append(row)
    return {"program": program, "arguments": arguments, "result": result, "mode": trace.mode,
            "steps": len(trace.steps), "rows": rows}


# ---------------------------------------------------------------------- input checks
def check_prompt(prompt: Any) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is empty: type a question, e.g. 81273+4406=")
    if len(prompt) > LIMITS.prompt_chars:
        raise ValueError(f"the prompt is {len(prompt)} characters long; at most {LIMITS.prompt_chars} are allowed")
    _check_text("prompt", prompt, "\n")


def check_source(source: Any) -> None:
    if not isinstance(source, str) or not source.strip():
        raise ValueError("the source is empty: paste Python functions to compile")
    if len(source) > LIMITS.source_chars:
        raise ValueError(f"the source is {len(source)} characters long; at most {LIMITS.source_chars} are allowed")
    lines = len(source.splitlines())
    if lines > LIMITS.source_lines:
        raise ValueError(f"the source has {lines} lines; at most {LIMITS.source_lines} are allowed")
    _check_text("source", source, "\n\t\r")


def _check_text(what: str, text: str, whitespace: str) -> None:
    """Printable ASCII only: what the model was trained on and the compiler's subset need."""
    for i, ch in enumerate(text):
        if not (" " <= ch <= "~" or ch in whitespace):
            raise ValueError(
                f"the {what} has an unsupported character {ch!r} (U+{ord(ch):04X}) at position {i + 1}; "
                f"only printable ASCII is supported"
            )


def check_int(what: str, value: Any, low: int, high: int, where: str = "") -> int:
    """``value`` as an int in [low, high] (a whole float from a number box counts)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what} must be a whole number from {low} to {high}{where}, got {value!r}")
    return value


def parse_arguments(text: Any) -> list:
    """``84, 36`` -> [84, 36]; ``[5, 3, 9, 1]`` -> [[5, 3, 9, 1]]: Python literals, ints and lists of ints only."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("no arguments: write them as Python literals, e.g. 84, 36 or [5, 3, 9, 1]")
    if len(text) > LIMITS.call_chars:
        raise ValueError(f"the arguments are {len(text)} characters long; at most {LIMITS.call_chars} are allowed")
    try:
        node = ast.parse(f"({text},)", mode="eval").body
    except SyntaxError:
        raise ValueError(
            f"cannot read the arguments {text!r}: write Python literals, e.g. 84, 36 or [5, 3, 9, 1]") from None
    return [_literal(arg) for arg in node.elts] if isinstance(node, ast.Tuple) else [_literal(node)]


def parse_call(text: Any) -> tuple[str, list]:
    """``triangle(10)`` -> ("triangle", [10])."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("no call: write one like triangle(10)")
    if len(text) > LIMITS.call_chars:
        raise ValueError(f"the call is {len(text)} characters long; at most {LIMITS.call_chars} are allowed")
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        node = None
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.keywords:
        raise ValueError(
            f"cannot read the call {text!r}: write a function name and literal arguments, e.g. triangle(10)")
    return node.func.id, [_literal(arg) for arg in node.args]


def _int(node: ast.AST):
    """An int literal, a minus sign allowed ("-4406"), or None."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _int(node.operand)
        return None if value is None else -value
    return node.value if isinstance(node, ast.Constant) and type(node.value) is int else None


def _literal(node: ast.AST):
    """An int or a list of ints, read from the AST (nothing is evaluated)."""
    if _int(node) is not None:
        return _int(node)
    if isinstance(node, ast.List) and all(_int(e) is not None for e in node.elts):
        return [_int(e) for e in node.elts]
    raise ValueError(f"unsupported argument {ast.unparse(node)!r}: arguments are ints or lists of ints")
