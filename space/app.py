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

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: it would call home at start
os.environ.setdefault("MPLBACKEND", "Agg")

from typing import Any, Iterator, Optional  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from settings import DEFAULT_MODEL, LIMITS, OfferedModel, Settings  # noqa: E402
from workers import Pool, RequestError  # noqa: E402

TITLE = "NCLlama: a language model that runs compiled algorithms"
STEP_COLUMNS = ["step", "program", "line", "instruction", "after the step"]
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
def token_choices(trace: Optional[dict]) -> list[tuple[str, int]]:
    """One choice per generated token: its number and text."""
    tokens = (trace or {}).get("tokens", [])
    return [(f"{i + 1}: {t['text']!r}", i) for i, t in enumerate(tokens)]


def token_summary(trace: dict, index: int) -> str:
    """What happened at one generated token, in words."""
    row = trace["tokens"][index]
    sequence = trace["sequence"]
    source = "the library" if row["library_weight"] >= 0.5 else "the language model"
    lines = [
        f"**Token {index + 1} of {len(trace['tokens'])}: `{row['text']!r}`**, gate **{row['gate']:.3f}**, the "
        f"library's weight in this token **{row['library_weight']:.3f}** (mostly {source}).",
        f"It answers the call made at position {row['site']} (`{sequence[row['site']]!r}`, probability "
        f"{row['site_probability']:.3f}): token {row['offset'] + 1} of that call's result.",
    ]
    if row["calls"]:
        top = row["calls"][0]
        operands = ", ".join(f"{o.get('param', '?')} = {o.get('text', o.get('value'))}" for o in top["operands"])
        lines.append(
            f"Top call: `{top['program']}({operands})` with probability {top['probability']:.4f} → "
            f"`{top['result_text'] or top['result']}` in {top['steps']} machine steps ({top['status']})."
        )
    else:
        lines.append("No library call fits the numbers and lists before this position.")
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
    """The executed instructions, and what each wrote (registers and memory cells that changed)."""
    if not machine or "rows" not in machine:
        return []
    out, previous = [], {}  # before the first step: every cell reads 0 (the arguments show as written then)
    for row in machine["rows"]:
        cells = _cells(row)
        changed = " ".join(f"{k}={v}" for k, v in cells.items() if previous.get(k, 0) != v)
        out.append([row["step"], row["program"], row["line"], row["instruction"], changed])
        previous = cells
    return out


def _cells(row: dict) -> dict:
    return {**row["registers"], **{f"m{i}": v for i, v in enumerate(row["memory"])}}


def heatmap(machine: Optional[dict]) -> Optional[Figure]:
    """Registers and memory cells (rows) over the machine's steps (columns), coloured by value."""
    if not machine or not machine.get("rows"):
        return None
    rows = machine["rows"]
    registers = list(rows[0]["registers"])
    cells = max(len(r["memory"]) for r in rows)
    names = registers + [f"m{i}" for i in range(cells)]
    grid = np.full((len(names), len(rows)), np.nan)
    for t, row in enumerate(rows):
        grid[: len(registers), t] = [row["registers"][k] for k in registers]
        grid[len(registers): len(registers) + len(row["memory"]), t] = row["memory"]
    figure = Figure(figsize=(9, min(8.0, max(3.0, 0.16 * len(names) + 1.2))), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(np.ma.masked_invalid(grid), aspect="auto", interpolation="nearest", cmap="viridis")
    every = max(1, len(names) // 40)
    axes.set_yticks(range(0, len(names), every), names[::every], fontsize=7)
    axes.set_xlabel("step")
    shown = "" if machine["steps"] == len(rows) else f", first {len(rows)} shown"
    call = f"{machine['program']}({', '.join(map(str, machine['arguments']))})"
    axes.set_title(f"Registers and memory over the steps of {call}: {machine['steps']} steps{shown} "
                   f"({machine['mode']} mode)", fontsize=9, wrap=True)
    figure.colorbar(image, ax=axes, label="value" if machine["mode"] == "hard" else "most likely value")
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


# ---------------------------------------------------------------------- the app
def build_demo(pool: Pool, models: dict[str, OfferedModel]) -> gr.Blocks:
    """The UI and its API endpoints, on a pool whose workers serve ``engine.Engine`` with the built ones of
    ``models`` (every model is listed; one not built says how to build it)."""
    info = pool.info()
    served = info["models"]
    programs = {p["name"]: p for p in info["programs"]}
    worker = {"concurrency_id": "worker", "concurrency_limit": pool.size}

    def check_built(model: str) -> None:
        if model not in served:
            raise gr.Error(models[model].not_built(model), title="Model not built")  # the radio refuses other names

    def ask(method: str, *args: Any) -> Any:
        try:
            return pool.call(method, *args)
        except RequestError as error:
            raise gr.Error(str(error), title="Request refused") from None

    def generate(prompt: str, max_new_tokens: float, model: str = DEFAULT_MODEL,
                 chat: bool = False) -> Iterator[tuple[str, dict]]:
        """Stream the answer of the NCLlama ``model`` to ``prompt`` (put in its chat template if ``chat``), then its
        per-token trace (JSON)."""
        check_built(model)
        try:
            for update in pool.stream("generate", prompt, max_new_tokens, model, chat):
                yield update["answer"], update
        except RequestError as error:
            raise gr.Error(str(error), title="Request refused") from None

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
        return (gr.Radio(choices=choices, value=0 if choices else None), *show_token(trace, 0))

    def show_token(trace: Optional[dict], index: Optional[int]):
        if not trace or not trace.get("done") or index is None or index >= len(trace["tokens"]):
            return "", [], [], [], None
        machine = trace["machines"].get(trace["tokens"][index]["machine"] or "")
        return (token_summary(trace, index), sequence_highlight(trace, index), calls_table(trace, index),
                steps_table(machine), heatmap(machine))

    def program(name: str) -> tuple[str, str, str, str]:
        """A library program's signature, Python source, assembly, and example arguments."""
        p = programs[name]  # the dropdown refuses other names
        signature = f"`{name}({', '.join(f'{n}: {t}' for n, t in p['params'])}) -> {p['returns']}`"
        if p["called_by_model"]:
            signature += " · the model calls it"
        if any(kind in ("tape", "numbers") for _, kind in p["params"]):
            signature += " · numbers of any sign and length (`tape`), lists of them (`numbers`)"
        example = {"int": "12", "list": "[5, 3, 9, 1]", "tape": "-4406", "numbers": "[5, -3, 9, 1200]"}
        examples = ", ".join(example[kind] for _, kind in p["params"])
        return signature, p["source"], p["assembly"], examples

    def run_program(name: str, arguments: str, mode: str, max_steps: float) -> tuple[str, dict]:
        """Run a library program (arguments as Python literals) in hard or soft mode, with its trace."""
        run = ask("run_program", name, arguments, mode, max_steps)
        return _run_text(run), run

    def compile_and_run(source: str, call: str, mode: str, max_steps: float) -> tuple[str, dict]:
        """Compile Python functions (AST only, never executed) and run ``call``, with its trace."""
        run = ask("compile", source, call, mode, max_steps)
        return _run_text(run), run

    def show_run(run: Optional[dict]):
        machine = (run or {}).get("machine")
        return steps_table(machine), heatmap(machine)

    def show_compiled(run: Optional[dict]):
        assembly = "\n\n".join(f["assembly"] for f in (run or {}).get("functions", []))
        return (assembly, *show_run(run))

    def step_cap(mode: str) -> gr.Number:
        cap = LIMITS.hard_steps if mode == "hard" else LIMITS.soft_steps
        return gr.Number(value=cap, maximum=cap)

    private = {"api_visibility": "private", "concurrency_limit": 4}
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(
            f"# {TITLE}\nAn NCLlama model calls programs compiled from Python inside its forward pass; here you can "
            "see what it called, on which operands, how the machine ran, and how each answer token came out."
        )
        default = served[DEFAULT_MODEL]
        with gr.Tab("Generate"):
            with gr.Row():
                model = gr.Radio(list(models), value=DEFAULT_MODEL, label="Model", elem_id="model", scale=1)
                note = gr.Markdown(model_note(DEFAULT_MODEL, default, models[DEFAULT_MODEL]), elem_id="model-note")
            with gr.Row():
                prompt = gr.Textbox(label="Prompt", value=info["examples"][0], elem_id="prompt", scale=4,
                                    max_length=LIMITS.prompt_chars)
                max_new = gr.Slider(1, LIMITS.new_tokens, value=24, step=1, label="Max new tokens", scale=1)
            # The chat option shows and hides with its column: a checkbox hidden itself would be hidden again by
            # every example that sets it (an example restores its inputs as they were built).
            with gr.Column(visible=default["chat"]) as chat_option:
                chat = gr.Checkbox(False, label="Ask in the chat template", elem_id="chat")
            button = gr.Button("Generate", variant="primary", elem_id="generate")
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
            with gr.Row():
                steps = gr.Dataframe(headers=STEP_COLUMNS, label="Machine: executed instructions (top call)",
                                     elem_id="machine-steps", interactive=False, max_height=420)
                plot = gr.Plot(label="Machine: registers and memory over steps", elem_id="heatmap", show_label=False)
            with gr.Accordion("Trace (JSON, as the /generate endpoint returns it)", open=False):
                trace = gr.JSON(elem_id="trace")
        with gr.Tab("Library"):
            gr.Markdown(f"The library of `{default['model']}`.")
            first = next(iter(programs))
            signature0, source0, assembly0, args0 = program(first)
            with gr.Row():
                name = gr.Dropdown(list(programs), value=first, label="Program", elem_id="program")
                signature = gr.Markdown(signature0)
            with gr.Row():
                source = gr.Code(source0, language="python", label="Python source", interactive=False)
                assembly = gr.Code(assembly0, label="Assembly", interactive=False)
            with gr.Row():
                arguments = gr.Textbox(args0, label="Arguments (Python literals)", elem_id="arguments")
                lib_mode = gr.Radio(["hard", "soft"], value="hard", label="Mode")
                lib_steps = gr.Number(LIMITS.hard_steps, label="Max steps", precision=0, minimum=1,
                                      maximum=LIMITS.hard_steps)
            lib_button = gr.Button("Run", variant="primary", elem_id="run-program")
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
                cc_mode = gr.Radio(["hard", "soft"], value="hard", label="Mode")
                cc_steps = gr.Number(LIMITS.hard_steps, label="Max steps", precision=0, minimum=1,
                                     maximum=LIMITS.hard_steps)
            cc_button = gr.Button("Compile and run", variant="primary", elem_id="compile")
            cc_result = gr.Textbox(label="Result", elem_id="compile-result", interactive=False)
            cc_assembly = gr.Code(label="Assembly", interactive=False)
            cc_table, cc_plot, cc_json = _run_view()

        model.change(choose_model, [model], [note, chat, chat_option, chat_examples, baseline, button], **private)
        generated = gr.on([button.click, prompt.submit], generate, [prompt, max_new, model, chat], [answer, trace],
                          api_name="generate", **worker)
        generated.success(show_trace, [trace], [tokens, summary, sequence, calls, steps, plot], **private)
        generated.success(compare, [prompt, max_new, model, chat], [baseline, library_off], api_name="compare",
                          **worker)
        tokens.input(show_token, [trace, tokens], [summary, sequence, calls, steps, plot], **private)

        name.change(program, [name], [signature, source, assembly, arguments], api_name="program",
                    concurrency_limit=None)
        lib_mode.change(step_cap, [lib_mode], [lib_steps], **private)
        lib_button.click(run_program, [name, arguments, lib_mode, lib_steps], [lib_result, lib_json],
                         api_name="run_program", **worker).success(show_run, [lib_json], [lib_table, lib_plot],
                                                                    **private)
        cc_mode.change(step_cap, [cc_mode], [cc_steps], **private)
        cc_button.click(compile_and_run, [code, call, cc_mode, cc_steps], [cc_result, cc_json], api_name="compile",
                        **worker).success(show_compiled, [cc_json], [cc_assembly, cc_table, cc_plot], **private)
    return demo


def _run_view() -> tuple[gr.Dataframe, gr.Plot, gr.JSON]:
    """A machine run's step table and register/memory heatmap side by side, and its JSON (Library and Compile tabs)."""
    with gr.Row():
        table = gr.Dataframe(headers=STEP_COLUMNS, label="Executed instructions", interactive=False, max_height=420)
        plot = gr.Plot(label="Registers and memory over steps", show_label=False)
    with gr.Accordion("Run (JSON)", open=False):
        run_json = gr.JSON()
    return table, plot, run_json


def _run_text(run: dict) -> str:
    arguments = ", ".join(map(str, run["arguments"]))
    return f"{run['program']}({arguments}) = {run['result']}   [{run['steps']} steps, {run['mode']} mode]"


def main() -> None:
    settings = Settings.from_env()
    built = {name: {"model": m.model, "baseline": m.baseline} for name, m in settings.built.items()}
    pool = Pool("engine:Engine", {"models": built}, size=settings.workers, time_limit=settings.time_limit)
    atexit.register(pool.close)
    demo = build_demo(pool, settings.models)
    demo.queue(max_size=settings.queue_size)
    demo.launch()  # host and port: GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (a Space sets them)


if __name__ == "__main__":
    main()
