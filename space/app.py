"""NCLlama's Gradio Space: watch a language model call compiled programs, step by step.

Generate: pick a model (``settings.py`` lists those offered; one not built yet says how to build it) and ask, as
typed or in the model's chat template; the answer streams token by token; for each token, the gate, the library
calls with their probabilities, the operands (the prompt tokens they point at), and the machine's execution; beside
it the answers of the model's plain baseline and of the same model with its library switched off. Library: every
program's source and assembly, and a form to run it. Compile: Python functions compiled (AST only) and run.

The models run in worker processes (``workers.py``) under a per-request time limit; this process serves the UI and
the API and draws the plots. Settings: ``settings.py`` (``NCLAMA_MODEL`` and friends). Run: ``python app.py``.
"""
from __future__ import annotations

import atexit
import os
import re
import socket
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: it would call home at start
os.environ.setdefault("MPLBACKEND", "Agg")

from typing import Any, Iterator, Optional  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import matplotlib  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from settings import DEFAULT_MODEL, LIMITS, OfferedModel, Settings  # noqa: E402
from workers import Pool, RequestError  # noqa: E402

TITLE = "NCLlama: a language model that runs compiled algorithms"
STEP_COLUMNS = ["step", "program", "line", "instruction", "after the step"]
SOFT_COLUMNS = ["line probability", "register probabilities"]
CALL_COLUMNS = ["program", "probability", "operands", "arguments", "result", "steps", "status"]
HIGHLIGHT_COLORS = {"this token": "#f59e0b", "call site": "#a78bfa"}
EXAMPLE_SOURCE = '''def triangle(n):
    total = 0
    for i in range(n + 1):
        total += i
    return total


def dot(xs, ys):
    total = 0
    for i in range(len(xs)):
        total += xs[i] * ys[i]
    return total
'''


# ---------------------------------------------------------------------- rendering (this process)
def from_library(row: dict) -> bool:
    """Whether the library wrote this token (its weight in the mixture at least 1/2)."""
    return row.get("library_weight", 0.0) >= 0.5


def token_choices(trace: Optional[dict]) -> list[tuple[str, int]]:
    """One choice per generated token: its number, its text, and who wrote it once the trace says."""
    tokens = (trace or {}).get("tokens", [])
    return [(f"{i + 1}: {t['text']!r}" + (" · library" if from_library(t) else " · LM" if "gate" in t else ""), i)
            for i, t in enumerate(tokens)]


def first_answered(trace: dict) -> int:
    """The token shown first: the first one the library wrote (else the first token)."""
    return next((i for i, row in enumerate(trace.get("tokens", [])) if from_library(row)), 0)


def token_summary(trace: dict, index: int) -> str:
    """What happened at one generated token, in words: who wrote it, how sure each side was, and the call."""
    row = trace["tokens"][index]
    sequence = trace["sequence"]
    weight = row["library_weight"]
    head = f"**Token {index + 1} of {len(trace['tokens'])}: `{row['text']!r}`**"
    if from_library(row):
        lines = [f"{head} came from **the library** (its weight in this token {weight:.3f}: gate {row['gate']:.3f} "
                 "times the share of the proposal that a call fills)."]
    else:
        lines = [f"{head} came from **the language model alone** (the library's weight in it: {weight:.3f})."]
    lm = f"The language model alone would write `{row['lm_text']!r}` (probability {row['lm_probability']:.3f})"
    lm += f" and gives this token {row['lm_probability_of_token']:.3f}."
    if row.get("library_text") is not None:
        lm += (f" The library proposes `{row['library_text']!r}` (probability {row['library_probability']:.3f} "
               "within its proposal).")
    lines.append(lm)
    if row["calls"]:
        top = row["calls"][0]
        operands = ", ".join(f"{o.get('param', '?')} = {o.get('text', o.get('value'))}" for o in top["operands"])
        lines.append(
            f"It answers the call made at position {row['site']} (`{sequence[row['site']]!r}`, probability "
            f"{row['site_probability']:.3f}), token {row['offset'] + 1} of its result. Top call there: "
            f"`{top['program']}({operands})` with probability **{top['probability']:.4f}** → "
            f"`{top['result_text'] or top['result']}` in {top['steps']} machine steps ({top['status']})."
        )
    elif not row.get("no_call_reason"):
        lines.append("No library program takes the numbers and lists before this position (there may be none).")
    if row.get("no_call_reason"):
        lines.append(f"**{row['no_call_reason'][0].upper()}{row['no_call_reason'][1:]}.**")
    return "\n\n".join(lines)


def sequence_highlight(trace: dict, index: int) -> list[tuple[str, Optional[str]]]:
    """The sequence up to this token, the top call's operands, its call site and the token itself marked."""
    row = trace["tokens"][index]
    labels: dict[int, str] = {}
    if row["calls"]:
        for operand in row["calls"][0]["operands"]:
            for position in range(operand.get("start", 0), operand.get("end", 0)):
                labels[position] = f"operand {operand.get('param', '')}".strip()
    labels[row["site"]] = "call site"
    labels[row["position"]] = "this token"
    return [(text, labels.get(i)) for i, text in enumerate(trace["sequence"][: row["position"] + 1])]


def calls_table(trace: dict, index: int) -> list[list]:
    return [
        [c["program"], round(c["probability"], 6), "; ".join(o.get("text", str(o.get("value"))) for o in c["operands"]),
         str(c["arguments"]), c["result_text"] or str(c["result"]), c["steps"], c["status"]]
        for c in trace["tokens"][index]["calls"]
    ]


def steps_table(machine: Optional[dict]) -> list[list]:
    """The executed instructions, and what each wrote (registers and memory cells that changed); in soft mode also
    the probability of the line (the pc's mass on it) and of each register's most likely value."""
    if not machine or "rows" not in machine:
        return []
    soft = machine.get("mode") == "soft"
    out, previous = [], {}  # before the first step: every cell reads 0 (the arguments show as written then)
    for row in machine["rows"]:
        cells = _cells(row)
        changed = " ".join(f"{k}={v}" for k, v in cells.items() if previous.get(k, 0) != v)
        line = [row["step"], row["program"], row["line"], row["instruction"], changed]
        if soft:
            odds = " ".join(f"{k}:{p:.2f}" for k, p in row.get("register_probabilities", {}).items())
            line += [round(row["probability"], 4), odds]
        out.append(line)
        previous = cells
    return out


def step_headers(machine: Optional[dict]) -> list[str]:
    return STEP_COLUMNS + (SOFT_COLUMNS if (machine or {}).get("mode") == "soft" else [])


def _cells(row: dict) -> dict:
    return {**row["registers"], **{f"m{i}": v for i, v in enumerate(row["memory"])}}


def heatmap(machine: Optional[dict]) -> Optional[Figure]:
    """Registers (top) and memory cells (bottom) over the machine's steps, each on its own colour scale (one large
    value, a heap pointer or an item of 1000, would flatten every digit of a shared scale); memory not yet allocated
    is grey. In soft mode the registers' panel shows the probability of each register's most likely value."""
    if not machine or not machine.get("rows"):
        return None
    rows = machine["rows"]
    soft = machine["mode"] == "soft"
    registers = list(rows[0]["registers"])
    cells = max(len(r["memory"]) for r in rows)
    reg = np.array([[(r.get("register_probabilities", {}).get(k, np.nan) if soft else r["registers"][k])
                     for r in rows] for k in registers], dtype=float)
    mem = np.full((max(cells, 1), len(rows)), np.nan)
    for t, row in enumerate(rows):
        mem[: len(row["memory"]), t] = row["memory"]
    height = min(9.0, max(3.5, 0.2 * (len(registers) + cells) + 1.6))
    figure = Figure(figsize=(9, height), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[len(registers), max(cells, 1)])
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#d4d4d8")
    panels = ((top, reg, registers, "probability of the most likely value" if soft else "register value"),
              (bottom, mem, [f"m{i}" for i in range(cells)], "memory value" + (" (most likely)" if soft else "")))
    for axes, grid, names, label in panels:
        image = axes.imshow(np.ma.masked_invalid(grid), aspect="auto", interpolation="nearest", cmap=cmap,
                            vmin=0 if soft and axes is top else None, vmax=1 if soft and axes is top else None)
        every = max(1, len(names) // 24)
        axes.set_yticks(range(0, len(names), every), names[::every], fontsize=9)
        figure.colorbar(image, ax=axes, label=label, pad=0.01)
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.set_xlabel("step", fontsize=10)
    bottom.legend(handles=[Patch(facecolor="#d4d4d8", label="memory not allocated")], loc="upper right",
                  fontsize=9, framealpha=0.9)
    shown = "" if machine["steps"] == len(rows) else f", first {len(rows)} shown"
    call = f"{machine['program']}({', '.join(map(str, machine['arguments']))})"
    top.set_title(f"{call}: {machine['steps']} steps{shown} ({machine['mode']} mode)", fontsize=10, wrap=True)
    return figure


def model_note(name: str, served: Optional[dict], model: OfferedModel) -> str:
    """What the chosen model is and what it is compared with (``served``: what the workers report of it); for a model
    not built yet, the commands that build it."""
    if served is None:
        return model.not_built(name)
    note = (f"`{served['model']}` ({served['mode']} execution, values below {served['value_size']}), compared "
            f"with its plain baseline `{served['baseline']}`.")
    if served["chat"]:
        note += " Its tokenizer has a chat template: *ask in the chat template* puts the prompt in the user's turn."
    return note


def baseline_label(served: Optional[dict]) -> str:
    return f"Plain baseline ({served['baseline'].rstrip('/').split('/')[-1]})" if served else "Plain baseline"


class Checked:
    """An input whose value this app checks itself, with its own message and one log line per refusal (the workers'
    ``engine.check_*``, ``check_built``, ``program``): Gradio's own check of a slider's bounds or a radio's choices
    would print a traceback to the server's log for every refused API request."""

    def preprocess(self, payload):
        return payload


class Slider(Checked, gr.Slider):
    pass


class Radio(Checked, gr.Radio):
    pass


class Dropdown(Checked, gr.Dropdown):
    pass


# ---------------------------------------------------------------------- the app
def build_demo(pool: Pool, models: dict[str, OfferedModel]) -> gr.Blocks:
    """The UI and its API endpoints, on a pool whose workers serve ``engine.Engine`` with the built ones of
    ``models`` (every model is listed; one not built says how to build it)."""
    info = pool.info()
    served = info["models"]
    programs = {p["name"]: p for p in info["programs"]}
    worker = {"concurrency_id": "worker", "concurrency_limit": pool.size}

    def check_built(model: str) -> None:
        if model not in models:
            print(f"refused: no model {model!r}", file=sys.stderr, flush=True)
            raise gr.Error(f"no model {model!r} here; the models offered are: {', '.join(models)}",
                           title="Request refused", print_exception=False)
        if model not in served:
            print(f"refused: {model} is not built", file=sys.stderr, flush=True)
            raise gr.Error(models[model].not_built(model), title="Model not built", print_exception=False)

    errors: dict[str, str] = {}  # each browser session's last refusal, shown beside its input by the failure handlers

    def refuse(error: RequestError, request: Optional[gr.Request]) -> gr.Error:
        """The refusal for the page, and one line in the server's log (a refusal is no server fault: no traceback)."""
        if request is not None:
            errors[request.session_hash] = str(error)
        print(f"refused: {error}", file=sys.stderr, flush=True)
        return gr.Error(str(error), title="Request refused", print_exception=False)

    def ask(method: str, *args: Any, request: Optional[gr.Request] = None) -> Any:
        try:
            return pool.call(method, *args)
        except RequestError as error:
            raise refuse(error, request) from None

    def last_error(request: gr.Request) -> str:
        return errors.pop(request.session_hash, "the request was refused")

    def generate(prompt: str, max_new_tokens: float, model: str = DEFAULT_MODEL, chat: bool = False,
                 request: gr.Request = None) -> Iterator[tuple[str, dict]]:
        """Stream the answer of the NCLlama ``model`` to ``prompt`` (put in its chat template if ``chat``), then its
        per-token trace (JSON)."""
        check_built(model)
        try:
            for update in pool.stream("generate", prompt, max_new_tokens, model, chat):
                yield update["answer"], update
        except RequestError as error:
            raise refuse(error, request) from None

    def compare(prompt: str, max_new_tokens: float, model: str = DEFAULT_MODEL, chat: bool = False) -> tuple[str, str]:
        """The answers of ``model``'s plain baseline and of ``model`` with its library switched off."""
        check_built(model)
        answers = ask("compare", prompt, max_new_tokens, model, chat)
        return answers["baseline"], answers["library_off"]

    def choose_model(name: str):
        chosen = served.get(name)
        chat_offered = bool(chosen and chosen["chat"])
        return (model_note(name, chosen, models[name]), False, gr.Column(visible=chat_offered),
                gr.Column(visible=chat_offered), gr.Textbox(label=baseline_label(chosen)),
                gr.Button(interactive=chosen is not None))

    def show_trace(trace: dict):
        choices = token_choices(trace)
        first = first_answered(trace) if choices else None
        return (gr.Radio(choices=choices, value=first), *show_token(trace, first))

    def show_token(trace: Optional[dict], index: Optional[int]):
        if not trace or not trace.get("done") or index is None or index >= len(trace["tokens"]):
            return "", [], [], step_view(None), None
        machine = trace["machines"].get(trace["tokens"][index]["machine"] or "")
        return (token_summary(trace, index), sequence_highlight(trace, index), calls_table(trace, index),
                step_view(machine), heatmap(machine))

    def step_view(machine: Optional[dict]) -> gr.Dataframe:
        return gr.Dataframe(value=steps_table(machine), headers=step_headers(machine))

    def error_note(message: str, source: Optional[str] = None) -> gr.Markdown:
        """The refusal, where the input is; for a compile error, the source with its line marked."""
        text = f"**Refused:** {message}"
        where = re.match(r"line (\d+)", message)
        if source and where:
            number, lines = int(where.group(1)), source.splitlines()
            shown = range(max(1, number - 2), min(len(lines), number + 2) + 1)
            text += "\n\n```\n" + "\n".join(f"{'>>' if n == number else '  '} {n:3d} | {lines[n - 1]}"
                                          for n in shown) + "\n```"
        return gr.Markdown(text, visible=True)

    hidden = gr.Markdown(visible=False)

    def generate_failed(request: gr.Request):
        return error_note(last_error(request)), "", gr.Radio(choices=[], value=None), "", [], [], step_view(None), None

    def run_failed(request: gr.Request):
        return error_note(last_error(request)), "", step_view(None), None, None

    def compile_failed(source: str, request: gr.Request):
        return error_note(last_error(request), source), "", "", step_view(None), None, None

    def program(name: str) -> tuple[str, str, str, str]:
        """A library program's signature, Python source, assembly, and example arguments."""
        if name not in programs:
            print(f"refused: no program {name!r}", file=sys.stderr, flush=True)
            raise gr.Error(f"no program {name!r} in the library; it has: {', '.join(programs)}",
                           title="Request refused", print_exception=False)
        p = programs[name]
        signature = f"`{name}({', '.join(f'{n}: {t}' for n, t in p['params'])}) -> {p['returns']}`"
        if p["called_by_model"]:
            signature += " · the model calls it"
        if any(kind in ("tape", "numbers") for _, kind in p["params"]):
            signature += " · numbers of any sign and length (`tape`), lists of them (`numbers`)"
        example = {"int": "12", "list": "[5, 3, 9, 1]", "tape": "-4406", "numbers": "[5, -3, 9, 1200]"}
        examples = ", ".join(example[kind] for _, kind in p["params"])
        return signature, p["source"], p["assembly"], examples

    def run_program(name: str, arguments: str, mode: str, max_steps: Optional[float] = None,
                    request: gr.Request = None) -> tuple[str, dict]:
        """Run a library program (arguments as Python literals) in hard or soft mode, with its trace; ``max_steps``
        left out: the mode's cap."""
        run = ask("run_program", name, arguments, mode, max_steps or None, request=request)  # (an empty box: 0)
        return _run_text(run), run

    def compile_and_run(source: str, call: str, mode: str, max_steps: Optional[float] = None,
                        request: gr.Request = None) -> tuple[str, dict]:
        """Compile Python functions (AST only, never executed) and run ``call``, with its trace; ``max_steps`` left
        out: the mode's cap."""
        run = ask("compile", source, call, mode, max_steps or None, request=request)  # (an empty box: 0)
        return _run_text(run), run

    def show_run(run: Optional[dict]):
        machine = (run or {}).get("machine")
        return step_view(machine), heatmap(machine)

    def show_compiled(run: Optional[dict]):
        assembly = "\n\n".join(f["assembly"] for f in (run or {}).get("functions", []))
        return (assembly, *show_run(run))

    def step_cap(mode: str) -> gr.Number:
        cap = LIMITS.hard_steps if mode == "hard" else LIMITS.soft_steps
        return gr.Number(value=None, placeholder=f"{cap} (the cap in {mode} mode)")

    private = {"api_visibility": "private", "concurrency_limit": 4}
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(
            f"# {TITLE}\nAn NCLlama model calls programs compiled from Python inside its forward pass; here you can "
            "see what it called, on which operands, how the machine ran, and how each answer token came out."
        )
        default = served[DEFAULT_MODEL]
        with gr.Tab("Generate"):
            with gr.Row():
                model = Radio(list(models), value=DEFAULT_MODEL, label="Model", elem_id="model", scale=1)
                note = gr.Markdown(model_note(DEFAULT_MODEL, default, models[DEFAULT_MODEL]), elem_id="model-note")
            with gr.Row():
                prompt = gr.Textbox(label="Prompt", value=info["examples"][0], elem_id="prompt", scale=4,
                                    max_length=LIMITS.prompt_chars)
                max_new = Slider(1, LIMITS.new_tokens, value=24, step=1, label="Max new tokens", scale=1)
            # The chat option shows and hides with its column: a checkbox hidden itself would be hidden again by
            # every example that sets it (an example restores its inputs as they were built).
            with gr.Column(visible=default["chat"]) as chat_option:
                chat = gr.Checkbox(False, label="Ask in the chat template", elem_id="chat")
            button = gr.Button("Generate", variant="primary", elem_id="generate")
            gen_error = gr.Markdown(visible=False, elem_id="generate-error")
            gr.Examples([[e] for e in info["examples"]], inputs=[prompt], label="Examples of every task",
                        examples_per_page=len(info["examples"]))
            with gr.Column(visible=default["chat"]) as chat_examples:
                gr.Examples([[e, True] for e in info["chat_examples"]], inputs=[prompt, chat],
                            label="Chat-style questions (asked in the chat template)",
                            examples_per_page=len(info["chat_examples"]))
            with gr.Row():
                answer = gr.Textbox(label="NCLlama", elem_id="answer", interactive=False)
                library_off = gr.Textbox(label="Same model, library switched off", elem_id="library-off",
                                         interactive=False)
                baseline = gr.Textbox(label=baseline_label(default), elem_id="baseline", interactive=False)
            tokens = gr.Radio(label="Generated tokens: pick one to see how it came out", elem_id="tokens",
                              choices=[])
            summary = gr.Markdown(elem_id="token-summary")
            sequence = gr.HighlightedText(label="Operands: the tokens the top call points at", elem_id="operands",
                                          color_map=HIGHLIGHT_COLORS, show_legend=True)
            calls = gr.Dataframe(headers=CALL_COLUMNS, label="Top library calls at the call site", elem_id="calls",
                                 interactive=False, wrap=True)
            steps = gr.Dataframe(headers=STEP_COLUMNS, label="Machine: executed instructions (top call)",
                                 elem_id="machine-steps", interactive=False, max_height=420, wrap=True)
            plot = gr.Plot(label="Machine: registers and memory over steps", elem_id="heatmap", show_label=False)
            with gr.Accordion("Trace (JSON, as the /generate endpoint returns it)", open=False):
                trace = gr.JSON(label="trace", elem_id="trace")
        with gr.Tab("Library"):
            gr.Markdown(f"The library of `{default['model']}`.")
            first = next(iter(programs))
            signature0, source0, assembly0, args0 = program(first)
            with gr.Row():
                name = Dropdown(list(programs), value=first, label="Program", elem_id="program")
                signature = gr.Markdown(signature0)
            with gr.Row():
                source = gr.Code(source0, language="python", label="Python source", interactive=False)
                assembly = gr.Code(assembly0, label="Assembly", interactive=False)
            with gr.Row():
                arguments = gr.Textbox(args0, label="Arguments (Python literals)", elem_id="arguments")
                lib_mode = Radio(["hard", "soft"], value="hard", label="Mode")
                lib_steps = gr.Number(None, label="Max steps (empty: the mode's cap)", precision=0,
                                      placeholder=f"{LIMITS.hard_steps} (the cap in hard mode)")
            lib_button = gr.Button("Run", variant="primary", elem_id="run-program")
            lib_error = gr.Markdown(visible=False, elem_id="program-error")
            lib_result = gr.Textbox(label="Result", elem_id="program-result", interactive=False)
            lib_table, lib_plot, lib_json = _run_view()
        with gr.Tab("Compile"):
            gr.Markdown(
                "Paste Python functions (ints and lists of ints; `if`, `while`, `for`, calls, recursion). The "
                f"compiler reads the AST only (the code is never executed) and compiles to V = "
                f"{LIMITS.compile_value_size}: values wrap modulo V. Limits: {LIMITS.source_chars} characters, "
                f"{LIMITS.source_lines} lines, {LIMITS.functions} functions, {LIMITS.program_lines} instructions."
            )
            code = gr.Code(EXAMPLE_SOURCE, language="python", label="Python source", interactive=True,
                           elem_id="source")
            with gr.Row():
                call = gr.Textbox("triangle(10)", label="Call (e.g. dot([1, 2, 3], [4, 5, 6]))", elem_id="call")
                cc_mode = Radio(["hard", "soft"], value="hard", label="Mode")
                cc_steps = gr.Number(None, label="Max steps (empty: the mode's cap)", precision=0,
                                     placeholder=f"{LIMITS.hard_steps} (the cap in hard mode)")
            cc_button = gr.Button("Compile and run", variant="primary", elem_id="compile")
            cc_error = gr.Markdown(visible=False, elem_id="compile-error")
            cc_result = gr.Textbox(label="Result", elem_id="compile-result", interactive=False)
            cc_assembly = gr.Code(label="Assembly", interactive=False)
            cc_table, cc_plot, cc_json = _run_view()

        model.change(choose_model, [model], [note, chat, chat_option, chat_examples, baseline, button], **private)
        generated = gr.on([button.click, prompt.submit], generate, [prompt, max_new, model, chat], [answer, trace],
                          api_name="generate", **worker)
        generated.success(show_trace, [trace], [tokens, summary, sequence, calls, steps, plot], **private)
        generated.success(lambda: hidden, None, [gen_error], **private)
        generated.failure(generate_failed, None, [gen_error, answer, tokens, summary, sequence, calls, steps, plot],
                          **private)
        generated.success(compare, [prompt, max_new, model, chat], [baseline, library_off], api_name="compare",
                          **worker)
        tokens.input(show_token, [trace, tokens], [summary, sequence, calls, steps, plot], **private)

        name.change(program, [name], [signature, source, assembly, arguments], api_name="program",
                    concurrency_limit=None)
        lib_mode.change(step_cap, [lib_mode], [lib_steps], **private)
        ran = lib_button.click(run_program, [name, arguments, lib_mode, lib_steps], [lib_result, lib_json],
                               api_name="run_program", **worker)
        ran.success(show_run, [lib_json], [lib_table, lib_plot], **private)
        ran.success(lambda: hidden, None, [lib_error], **private)
        ran.failure(run_failed, None, [lib_error, lib_result, lib_table, lib_plot, lib_json], **private)
        cc_mode.change(step_cap, [cc_mode], [cc_steps], **private)
        compiled = cc_button.click(compile_and_run, [code, call, cc_mode, cc_steps], [cc_result, cc_json],
                                   api_name="compile", **worker)
        compiled.success(show_compiled, [cc_json], [cc_assembly, cc_table, cc_plot], **private)
        compiled.success(lambda: hidden, None, [cc_error], **private)
        compiled.failure(compile_failed, [code], [cc_error, cc_result, cc_assembly, cc_table, cc_plot, cc_json],
                         **private)
    return demo


def _run_view() -> tuple[gr.Dataframe, gr.Plot, gr.JSON]:
    """A machine run's step table and register/memory heatmap side by side, and its JSON (Library and Compile tabs)."""
    # one above the other: side by side, a narrow window cut the table's columns
    table = gr.Dataframe(headers=STEP_COLUMNS, label="Executed instructions", interactive=False, max_height=420,
                         wrap=True)
    plot = gr.Plot(label="Registers and memory over steps", show_label=False)
    with gr.Accordion("Run (JSON)", open=False):
        run_json = gr.JSON(label="run")
    return table, plot, run_json


def _run_text(run: dict) -> str:
    arguments = ", ".join(map(str, run["arguments"]))
    return f"{run['program']}({arguments}) = {run['result']}   [{run['steps']} steps, {run['mode']} mode]"


def check_port() -> None:
    """Refuse to start where the port is taken (Gradio would move to the next free one without saying so, and the
    README's address would show something else)."""
    host = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    port = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            raise SystemExit(f"port {port} on {host} is in use: stop what serves it, or choose another port "
                             f"(make demo PORT=7861, or GRADIO_SERVER_PORT=7861)") from None


def main() -> None:
    check_port()
    settings = Settings.from_env()
    built = {name: {"model": m.model, "baseline": m.baseline} for name, m in settings.built.items()}
    pool = Pool("engine:Engine", {"models": built}, size=settings.workers, time_limit=settings.time_limit)
    atexit.register(pool.close)
    demo = build_demo(pool, settings.models)
    demo.queue(max_size=settings.queue_size)
    demo.launch()  # host and port: GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (a Space sets them)


if __name__ == "__main__":
    main()
