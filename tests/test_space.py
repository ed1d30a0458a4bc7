"""The Gradio Space (space/app.py), served on a local port with the shipped model: every API endpoint through
gradio_client, good and bad input, streaming and queueing; then a real browser (Debian's chromium driven by
Playwright) that asks a question and reads the answer and its trace. Then the second model, with a stand-in for the
SmolLM2 one (not built in tests): asked as typed and in its chat template, loaded by the worker only when asked for;
and the same model not built, listed with the commands that build it."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import gradio_client
import pytest
from space_server import serve, space_module, stop

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "hub_assets" / "nclama-tiny"
BASELINE = ROOT / "hub_assets" / "llama-tiny-baseline"
ARTIFACTS = ROOT / "out" / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
SMOLLM2 = "nclama-smollm2-135m"
BUILD_SMOLLM2 = ["nclama base smollm2-135m-instruct -o out/smollm2",
                 "nclama export hub_assets/nclama-smollm2-135m --base out/smollm2 -o out/nclama-smollm2-135m-hub"]


LOGS: dict[str, Path] = {}  # each served Space's log, by its address


def serve_space(folder: Path, **settings: str) -> tuple[subprocess.Popen, str]:
    """The Space served from the checkout as `make demo` does, with only ``settings`` among the NCLAMA_ variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NCLAMA_")}
    return serve([sys.executable, "space/app.py"], ROOT, {**env, **settings}, folder / "space.log")


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """The Space as `make demo` serves it: from the checkout, on the shipped models; the SmolLM2 model's folder is
    one that does not exist, so that it is the model not built here whatever this checkout holds."""
    folder = tmp_path_factory.mktemp("space")
    process, url = serve_space(folder, NCLAMA_SMOLLM2_MODEL=str(folder / "not-built"))
    LOGS[url] = folder / "space.log"
    yield url
    stop(process)


@pytest.fixture(scope="module")
def client(space):
    return gradio_client.Client(space, verbose=False)


def refused(client, *args, api_name: str) -> str:
    """The error message the API gives for a refused request."""
    with pytest.raises(gradio_client.exceptions.AppError) as error:
        client.predict(*args, api_name=api_name)
    return str(error.value)


# ---------------------------------------------------------------------- the API
def test_the_api_has_the_named_endpoints(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/generate", "/compare", "/program", "/run_program", "/compile"} <= set(endpoints)
    # the model and the chat form come last, with defaults, so that a call may leave them out
    for name in ("/generate", "/compare"):
        parameters = {p["parameter_name"]: p for p in endpoints[name]["parameters"]}
        assert list(parameters) == ["prompt", "max_new_tokens", "model", "chat"]
        assert parameters["model"]["parameter_default"] == "nclama-tiny"
        assert parameters["chat"]["parameter_has_default"] and parameters["chat"]["parameter_default"] is False


def test_generate_answers_the_canonical_addition_and_traces_it(client):
    answer, trace = client.predict("81273+4406=", 24, api_name="/generate")
    assert answer == "85679"
    assert trace["done"] and trace["answer"] == "85679"
    assert trace["model"] == "nclama-tiny" and trace["chat"] is False
    sequence = trace["sequence"]
    assert "".join(sequence[trace["prompt_length"]:]).startswith("85679")
    first = trace["tokens"][0]
    assert first["text"] == sequence[trace["prompt_length"]] and first["gate"] > 0.5
    assert sequence[first["site"]] == "="  # the call is made at the end of the prompt
    top = first["calls"][0]
    assert top["program"] == "long_add" and top["probability"] > 0.5 and top["status"] == "ok"
    assert top["result_text"] == "85679"
    # the operands point at the prompt tokens of the two numbers (LLaMA 3 style chunks: 812|73, 440|6)
    pointed = sorted("".join(sequence[o["start"]:o["end"]]) for o in top["operands"])
    assert pointed == ["4406", "81273"] and sorted(o["text"] for o in top["operands"]) == ["4406", "81273"]
    assert {o["param"] for o in top["operands"]} == {"a", "b"}
    # the machine's execution of that call: every step's instruction, registers and memory
    machine = trace["machines"][first["machine"]]
    assert machine["program"] == "long_add" and machine["steps"] == top["steps"] > 10
    assert len(machine["rows"]) == machine["steps"] and machine["rows"][0]["instruction"]  # every step is a row
    assert {"r0", "x0"} <= set(machine["rows"][0]["registers"])
    # later tokens continue the same call, one offset further
    assert [row["offset"] for row in trace["tokens"][:2]] == [0, 1]
    assert trace["tokens"][1]["site"] == first["site"]


def test_numbers_beyond_what_json_holds_come_as_strings(client):
    """40-digit operands and results: the trace carries them exactly, as decimal strings (a JSON number that large
    is refused by the server's encoder or rounded by a browser)."""
    a, b = 1311696770583281776596904119734399028666, 8621924690805244511996388221277731596860
    answer, trace = client.predict(f"What is {a} plus {b}?", 64, api_name="/generate")
    assert answer == str(a + b)
    top = trace["tokens"][0]["calls"][0]
    assert top["program"] == "long_add" and top["result"] == str(a + b)
    assert sorted(top["arguments"]) == sorted([str(a), str(b)])
    result, run = client.predict("long_add", f"{a}, {b}", "hard", 20000, api_name="/run_program")
    assert run["result"] == str(a + b) and str(a + b) in result


@pytest.mark.timeout(300)
def test_generate_answers_every_example(client):
    from modeling_nclama.toolchain.tasks import CANONICAL

    wrong, called = {}, 0
    for prompt, expected in CANONICAL:
        answer, trace = client.predict(prompt, 24, api_name="/generate")
        if answer != expected or not all("calls" in token and "gate" in token for token in trace["tokens"]):
            wrong[prompt] = answer
        called += any(token["calls"] and token["library_weight"] > 0.5 for token in trace["tokens"])
    assert not wrong
    # every answer but one comes from a library call that answered (the first token after "?" is the LM's
    # space): the shipped model answers 7! from what it memorized (no call is made on "7!=")
    assert called >= len(CANONICAL) - 1


def test_generate_streams_token_by_token(client):
    job = client.submit("Sort the list [5, 3, 9, 1].", 24, api_name="/generate")
    job.result(timeout=120)
    updates = job.outputs()
    answers = [answer for answer, _ in updates]
    assert answers[-1] == "[1, 3, 5, 9]"
    assert len(updates) >= 10  # one update per token (12 of them, and the end), then the trace
    assert all(b.startswith(a) for a, b in zip(answers, answers[1:]))
    assert not updates[0][1]["done"] and updates[-1][1]["done"]
    assert updates[-1][1]["tokens"][0]["calls"][0]["program"] == "sort_numbers"


def _reference_answer(model, tokenizer, prompt: str) -> str:
    import torch
    from modeling_nclama.toolchain.evaluation import answer_text

    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return answer_text(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))


def test_compare_gives_the_baseline_and_the_library_off_answers(client):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompt = "81273+4406="
    baseline, library_off = client.predict(prompt, 24, api_name="/compare")
    plain = AutoModelForCausalLM.from_pretrained(BASELINE)
    assert baseline == _reference_answer(plain, AutoTokenizer.from_pretrained(BASELINE), prompt)
    off = AutoModelForCausalLM.from_pretrained(SHIPPED, trust_remote_code=True)
    off.library = None  # the runtime calls the library only while one is attached
    assert library_off == _reference_answer(off, AutoTokenizer.from_pretrained(SHIPPED, trust_remote_code=True), prompt)
    assert "85679" not in (baseline, library_off)  # only the library computes this sum


def test_program_shows_source_and_assembly(client):
    signature, source, assembly, example = client.predict("gcd", api_name="/program")
    assert signature.startswith("`gcd(a: int, b: int) -> int`")
    assert source.startswith("def gcd(a, b):") and "mod" in assembly and example == "12, 12"
    signature, *_ = client.predict("long_add", api_name="/program")
    assert "numbers of any sign and length" in signature


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_run_program_in_both_modes_with_a_trace(client, mode):
    text, run = client.predict("gcd", "84, 36", mode, 100, api_name="/run_program")
    assert run["result"] == 12 and text.startswith("gcd(84, 36) = 12")
    machine = run["machine"]
    assert machine["mode"] == mode and machine["steps"] == run["steps"] == len(machine["rows"])
    assert machine["rows"][-1]["instruction"] == "ret"
    text, run = client.predict("insertion_sort", "[5, 3, 9, 1]", mode, 100, api_name="/run_program")
    assert run["result"] == [1, 3, 5, 9]


def test_max_steps_left_out_is_the_cap_of_the_mode(client):
    """Defaults that work in every mode: without max_steps a soft run gets the soft cap, a hard one the hard cap."""
    for mode in ("hard", "soft"):
        text, run = client.predict("gcd", "84, 36", mode, api_name="/run_program")
        assert run["result"] == 12 and run["machine"]["mode"] == mode
        _, run = client.predict("def sq(n):\n    return n * n\n", "sq(12)", mode, api_name="/compile")
        assert run["result"] == 144


def test_the_api_names_its_outputs(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    labels = {name: [r["label"] for r in endpoints[name]["returns"]] for name in ("/generate", "/run_program", "/compile")}
    assert labels == {"/generate": ["NCLlama", "trace"], "/run_program": ["Result", "run"],
                      "/compile": ["Result", "run"]}


def test_compile_runs_a_pasted_function(client):
    source = "def triangle(n):\n    total = 0\n    for i in range(n + 1):\n        total += i\n    return total\n"
    text, run = client.predict(source, "triangle(10)", "hard", 1000, api_name="/compile")
    assert run["result"] == 55 and text.startswith("triangle(10) = 55")
    assert run["functions"][0]["assembly"].startswith("def triangle(n: int) -> int")
    assert run["machine"]["rows"][0]["program"] == "triangle"
    _, run = client.predict(source, "triangle(4)", "soft", 100, api_name="/compile")
    assert run["result"] == 10 and run["machine"]["mode"] == "soft"


def test_requests_are_queued_and_all_answered(client):
    prompts = {"81273-4406=": "76867", "What is 734 times 58?": "42572", "Add 3 and 4.": "7"}
    jobs = {p: client.submit(p, 24, api_name="/generate") for p in prompts}
    assert {p: job.result(timeout=180)[0] for p, job in jobs.items()} == prompts


# ---------------------------------------------------------------------- bad input: a clear error, never a crash
SOURCE = "def f(n):\n    return n + 1\n"
TOO_MANY_INSTRUCTIONS = "def f(x):\n" + "".join(f"    x = x{'*x' * 90}\n" for _ in range(20)) + "    return x\n"
TOO_MANY_FUNCTIONS = "".join(f"def f{i}(n):\n    return n\n" for i in range(17))
SPIN = "def spin(n):\n    while n < 255:\n        n = n + 0\n    return n\n"


@pytest.mark.parametrize("api_name, args, message", [
    ("/generate", ("", 24), "the prompt is empty"),
    ("/generate", ("   ", 24), "the prompt is empty"),
    ("/generate", ("1" * 601, 24), "at most 600 are allowed"),
    ("/generate", ("9," * 290, 24), "tokens long; at most 320 are allowed"),
    ("/generate", ("81273+4406=\u00e9", 24), "unsupported character 'é' (U+00E9) at position 12"),
    ("/generate", ("81273\x00+4406=", 24), "unsupported character"),
    ("/generate", ("81273+4406=", 0), "max_new_tokens must be a whole number from 1 to 256, got 0"),
    ("/generate", ("81273+4406=", 257), "max_new_tokens must be a whole number from 1 to 256"),
    ("/generate", ("81273+4406=", 2.5), "max_new_tokens must be a whole number from 1 to 256"),
    ("/generate", ("81273+4406=", 24, "nclama-tiny", True), "nclama-tiny has no chat template: ask without it"),
    ("/generate", ("81273+4406=", 24, "llama-7b"), "no model 'llama-7b' here; the models offered are: nclama-tiny"),
    ("/compare", ("", 24), "the prompt is empty"),
    ("/compare", ("81273+4406=", 24, "nclama-tiny", True), "nclama-tiny has no chat template"),
    ("/program", ("no_such_program",), "no program 'no_such_program' in the library; it has: gcd"),
    ("/run_program", ("gcd", "84", "hard", 100), "gcd takes 2 arguments"),
    ("/run_program", ("gcd", "84, x", "hard", 100), "unsupported argument 'x'"),
    ("/run_program", ("gcd", "84, (", "hard", 100), "cannot read the arguments"),
    ("/run_program", ("gcd", "84, 5000", "hard", 100), "outside [0, 1024)"),
    ("/run_program", ("gcd", "", "hard", 100), "no arguments"),
    ("/run_program", ("gcd", "84, 36", "hard", 3), "gcd did not halt within 3 steps"),
    ("/run_program", ("gcd", "84, 36", "hard", 20001), "max_steps must be a whole number from 1 to 20000 in hard mode"),
    ("/run_program", ("gcd", "84, 36", "soft", 101), "max_steps must be a whole number from 1 to 100 in soft mode"),
    ("/run_program", ("gcd", "84, 36", "fast", 100), "mode must be 'hard' or 'soft', got 'fast'"),
    ("/compile", ("def f(n):\n    return n.real\n", "f(1)", "hard", 100), "line 2, column 12: unsupported syntax"),
    ("/compile", ("def f(n:\n    return n\n", "f(1)", "hard", 100), "line 1"),
    ("/compile", ("", "f(1)", "hard", 100), "the source is empty"),
    ("/compile", ("#" * 4001, "f(1)", "hard", 100), "at most 4000 are allowed"),
    ("/compile", ("#\n" * 151, "f(1)", "hard", 100), "151 lines; at most 150 are allowed"),
    ("/compile", ("# caf\u00e9\n" + SOURCE, "f(1)", "hard", 100), "unsupported character"),
    ("/compile", (TOO_MANY_FUNCTIONS, "f0(1)", "hard", 100), "17 functions; at most 16"),
    ("/compile", (TOO_MANY_INSTRUCTIONS, "f(1)", "hard", 100), "instructions; at most 1500 are allowed"),
    ("/compile", (SOURCE, "g(1)", "hard", 100), "the call names 'g'"),
    ("/compile", (SOURCE, "f(", "hard", 100), "cannot read the call"),
    ("/compile", (SOURCE, "f(__import__('os'))", "hard", 100), "unsupported argument"),
    ("/compile", (SPIN, "spin(1)", "hard", 500), "did not halt within 500 steps"),
])
def test_bad_input_is_refused_with_a_clear_message(client, api_name, args, message):
    assert message in refused(client, *args, api_name=api_name)


@pytest.mark.parametrize("api_name", ["/generate", "/compare"])
def test_a_model_not_built_is_refused_with_the_commands_that_build_it(client, space, api_name):
    message = refused(client, "What is 81273 plus 4406?", 24, SMOLLM2, True, api_name=api_name)
    assert message.startswith(f"{SMOLLM2} is not built here") and "not-built` holds no config.json" in message
    assert all(command in message for command in BUILD_SMOLLM2)


def test_a_refusal_is_one_line_of_the_log(space, client):
    for args, api_name in ((("", 24), "/generate"), (("gcd", "84", "hard"), "/run_program")):
        refused(client, *args, api_name=api_name)
    log = LOGS[space].read_text()
    assert "refused: the prompt is empty" in log and "refused: gcd takes 2 arguments" in log
    assert "Traceback" not in log


def test_the_space_refuses_to_start_on_a_port_in_use(monkeypatch):
    import socket

    from space_server import space_module

    monkeypatch.syspath_prepend(str(ROOT / "space"))  # app.py imports its neighbours
    app = space_module("app")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        monkeypatch.setenv("GRADIO_SERVER_NAME", "127.0.0.1")
        monkeypatch.setenv("GRADIO_SERVER_PORT", str(taken.getsockname()[1]))
        with pytest.raises(SystemExit, match=r"port \d+ on 127.0.0.1 is in use: .*\(make demo PORT=7861"):
            app.check_port()


def test_soft_runs_show_their_probabilities(client, monkeypatch):
    """The step table of a soft run has the line's and the registers' probabilities; its heatmap shows the registers'
    probabilities on [0, 1] and memory on a scale of its own."""
    from space_server import space_module

    monkeypatch.syspath_prepend(str(ROOT / "space"))
    app = space_module("app")
    _, soft = client.predict("gcd", "84, 36", "soft", api_name="/run_program")
    _, hard = client.predict("gcd", "84, 36", "hard", api_name="/run_program")
    assert app.step_headers(soft["machine"])[-2:] == ["line probability", "register probabilities"]
    assert app.step_headers(hard["machine"]) == app.STEP_COLUMNS
    rows = app.steps_table(soft["machine"])
    assert all(len(row) == 7 and 0 <= row[5] <= 1 and "r0:" in row[6] for row in rows)
    figure = app.heatmap(soft["machine"])
    registers, memory = figure.axes[0], figure.axes[1]
    assert registers.images[0].get_clim() == (0, 1) and memory.images[0].get_clim() != (0, 1)


def test_the_page_names_models_not_paths(monkeypatch):
    from space_server import space_module

    monkeypatch.syspath_prepend(str(ROOT / "space"))
    engine = space_module("engine")
    assert engine.shown_name(str(ROOT / "hub_assets" / "nclama-tiny")) == "nclama-tiny"
    assert engine.shown_name("nclama/nclama-tiny") == "nclama/nclama-tiny"


def test_the_space_still_serves_after_bad_input(client):
    test_bad_input_is_refused_with_a_clear_message(client, "/compile", (SPIN, "spin(1)", "hard", 500), "did not halt")
    assert client.predict("81273+4406=", 24, api_name="/generate")[0] == "85679"


# ---------------------------------------------------------------------- a real browser
def _install_chromium() -> None:
    """Debian's chromium, installed with apt-get (as root, or through passwordless sudo); skip only if neither."""
    if Path(CHROMIUM).exists():
        return
    if os.geteuid() == 0:
        sudo = []
    elif shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        sudo = ["sudo", "-n"]
    else:
        pytest.skip(f"{CHROMIUM} is missing and this user can install no package (not root, no passwordless sudo)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]
    for command in (["apt-get", "update", "-qq"], install):
        done = subprocess.run(sudo + command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            pytest.skip(f"could not install chromium ({' '.join(command)}): {done.stderr[-500:]}")


def _import_playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "playwright"], capture_output=True,
                              text=True)
        if done.returncode != 0:
            pytest.skip(f"could not install playwright with pip: {done.stderr[-500:]}")
        from playwright.sync_api import sync_playwright
    return sync_playwright


@pytest.fixture(scope="module")
def browser():
    _install_chromium()
    sync_playwright = _import_playwright()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.mark.timeout(300)
def test_a_browser_asks_and_sees_the_answer_and_its_trace(space, browser):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 2000})
    try:
        page.goto(space)
        page.locator("#prompt textarea").fill("81273+4406=")
        page.locator("#generate").click()
        page.wait_for_function("document.querySelector('#answer textarea').value === '85679'", timeout=120_000)
        # the trace of the first answer token: the gate, the call, the operands highlighted, the machine
        page.wait_for_selector("#heatmap img", timeout=60_000)
        summary = page.locator("#token-summary").inner_text()
        weight = re.search(r"came from the library \(its weight in this token ([0-9.]+)", summary)
        assert "Token 1 of" in summary and weight and float(weight.group(1)) > 0.9 and "long_add(" in summary
        # how sure each side was: the language model's own choice, the library's, the call's probability
        assert re.search(r"The language model alone would write '.*' \(probability [0-9.]+\)", summary)
        assert re.search(r"The library proposes '856' \(probability [0-9.]+", summary)
        assert re.search(r"with probability 0\.9\d+", summary)
        assert "1: '856' · library" in page.locator("#tokens").inner_text()  # who wrote each token
        highlighted = page.locator("#operands .token.highlighted .text").all_inner_texts()
        assert {"812", "73", "440", "6", "=", "856"} <= set(highlighted) and "+" not in highlighted
        legend = page.locator("#operands .legend-item").all_inner_texts()
        assert {"operand a", "operand b", "call site", "this token"} <= set(legend)
        calls = page.locator("#calls").inner_text()
        assert "long_add" in calls and "85679" in calls
        assert "load x2" in page.locator("#machine-steps").inner_text()
        # the side-by-side answers
        page.wait_for_function("document.querySelector('#baseline textarea').value !== ''", timeout=60_000)
        assert page.locator("#library-off textarea").input_value() != ""
        # another token of the answer
        page.locator("#tokens label").nth(1).click()
        page.wait_for_function("document.querySelector('#token-summary').innerText.includes('Token 2 of')")
        assert "token 2 of its result" in page.locator("#token-summary").inner_text()
        page.wait_for_function("document.querySelectorAll('.pending').length === 0")  # every output drawn
        page.screenshot(path=str(ARTIFACTS / "space_generate.png"), full_page=True)
        # bad input: a clear message where the input is, and the previous answer's panels are cleared
        page.locator("#prompt textarea").fill("")
        page.locator("#generate").click()
        toast = page.locator("[data-testid=toast-body]").filter(has_text="the prompt is empty")
        toast.wait_for(timeout=60_000)
        page.wait_for_function("document.querySelector('#generate-error') && "
                               "document.querySelector('#generate-error').innerText.includes('the prompt is empty')")
        assert page.locator("#token-summary").inner_text().strip() == ""
        assert page.locator("#answer textarea").input_value() == "" and not page.locator("#heatmap img").count()
        page.screenshot(path=str(ARTIFACTS / "space_error.png"))
        # a prompt the library does not answer: the first token is the language model's, and the page says so
        page.locator("#prompt textarea").fill("The capital of France is")
        page.locator("#generate").click()
        page.wait_for_function("document.querySelector('#token-summary').innerText.includes('Token 1 of')",
                               timeout=120_000)
        assert "came from the language model alone" in page.locator("#token-summary").inner_text()
        assert not page.locator("#generate-error").is_visible()
        # the model not built: its commands instead of a Generate button, and no chat option
        page.locator("#model label").filter(has_text=SMOLLM2).click()
        page.wait_for_function("document.querySelector('#model-note').innerText.includes('is not built here')")
        note = page.locator("#model-note").inner_text()
        assert all(command in note for command in BUILD_SMOLLM2)
        page.wait_for_function("document.querySelector('#generate').disabled")
        assert not page.locator("#chat").is_visible()
        page.screenshot(path=str(ARTIFACTS / "space_not_built.png"))
    finally:
        page.close()
    assert (ARTIFACTS / "space_generate.png").stat().st_size > 10_000


@pytest.mark.timeout(420)
def test_a_browser_runs_programs_in_both_modes_and_sees_errors_where_it_typed(space, browser):
    """Library and Compile tabs: a soft run shows its probabilities; a refused run clears the stale panels and
    says why beside the input (a compile error with its line marked); a narrow window keeps the tables' columns."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    try:
        page.goto(space)
        page.get_by_role("tab", name="Library").click()
        page.locator("#arguments textarea").fill("84, 36")
        page.locator("#run-program").click()
        page.wait_for_function("document.querySelector('#program-result textarea').value.includes('= 12')",
                               timeout=60_000)
        page.wait_for_function("document.querySelectorAll('.pending').length === 0")
        page.screenshot(path=str(ARTIFACTS / "space_library_hard.png"), full_page=True)
        for attempt in range(5):  # a click before the page's handlers are bound changes nothing: click again
            page.get_by_label("hard" if attempt % 2 else "soft").first.check()
            try:
                page.wait_for_selector("input[placeholder='100 (the cap in soft mode)']", timeout=6_000)
                break
            except Exception:  # noqa: BLE001 - playwright's TimeoutError: try once more
                continue
        page.locator("#run-program").click()
        page.wait_for_function("document.querySelector('#program-result textarea').value.includes('soft mode')",
                               timeout=120_000)
        page.wait_for_function("document.querySelectorAll('.pending').length === 0")
        page.screenshot(path=str(ARTIFACTS / "space_library_soft.png"), full_page=True)
        page.locator("#arguments textarea").fill("84")  # gcd takes two
        page.locator("#run-program").click()
        page.wait_for_function("document.querySelector('#program-error') && "
                               "document.querySelector('#program-error').innerText.includes('Refused')", timeout=60_000)
        assert page.locator("#program-result textarea").input_value() == ""
        page.screenshot(path=str(ARTIFACTS / "space_library_error.png"), full_page=True)

        page.get_by_role("tab", name="Compile").click()
        page.locator("#compile").click()
        page.wait_for_function("document.querySelector('#compile-result textarea').value.includes('= 55')",
                               timeout=60_000)
        page.locator("#source .cm-content").fill("def f(n):\n    x = 1\n    return n.real\n")
        page.locator("#call textarea").fill("f(1)")
        page.locator("#compile").click()
        page.wait_for_function("document.querySelector('#compile-error') && "
                               "document.querySelector('#compile-error').innerText.includes('line 3')", timeout=60_000)
        error = page.locator("#compile-error").inner_text()
        assert ">>   3 | " in error and "return n.real" in error  # the line, marked
        assert page.locator("#compile-result textarea").input_value() == ""
        page.screenshot(path=str(ARTIFACTS / "space_compile_error.png"), full_page=True)

        page.set_viewport_size({"width": 800, "height": 1800})
        page.get_by_role("tab", name="Library").click()
        page.get_by_label("hard").first.check()
        page.locator("#arguments textarea").fill("84, 36")
        page.locator("#run-program").click()
        page.wait_for_function("document.querySelector('#program-result textarea').value.includes('= 12')",
                               timeout=60_000)
        page.wait_for_function("document.querySelectorAll('.pending').length === 0")
        headers = page.locator("table:visible thead").first.inner_text()
        assert all(column in headers for column in ("step", "program", "instruction", "after the step"))
        page.screenshot(path=str(ARTIFACTS / "space_narrow.png"), full_page=True)
    finally:
        page.close()


@pytest.mark.parametrize("readme, after", [(ROOT / "README.md", "## The Space"),
                                           (ROOT / "space" / "README.md", "## API")])
def test_the_readme_api_examples_run_as_written(space, readme, after):
    text = readme.read_text()
    block = re.search(r"```python\n(.*?)```", text[text.index(after):], re.S).group(1)
    namespace: dict = {}
    exec(compile(block.replace("http://127.0.0.1:7860/", space), str(readme), "exec"), namespace)
    assert namespace["answer"] == "85679" and namespace["trace"]["tokens"][0]["calls"][0]["program"] == "long_add"
    assert namespace["signature"].startswith("`gcd(") and namespace["run"]["result"] is not None
    assert namespace["trace"]["model"] == "nclama-tiny" and not namespace["trace"]["chat"]


# ---------------------------------------------------------------------- two models: a stand-in for the SmolLM2 one
# A chat template as simple as a chat model's, so that the tests can write out what it renders.
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}")


def with_chat_template(folder: Path, copy: Path) -> Path:
    from transformers import AutoTokenizer

    shutil.copytree(folder, copy)
    tokenizer = AutoTokenizer.from_pretrained(copy, trust_remote_code=True)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(copy)
    return copy


@pytest.fixture(scope="module")
def chat_models(tmp_path_factory) -> tuple[Path, Path]:
    """Stand-ins for the SmolLM2 model and its plain base: the shipped nclama-tiny and its baseline, their tokenizers
    given a chat template. The model carries the project's runtime, as an export made now does. nclama-tiny was
    trained without a template and reads its words ("user", "assistant", ":") as a sentence's: the stand-in's call
    reader scores them 0 (their keyword rows zeroed) and its gate reads the hidden state alone (nc_gate_reader
    "hidden"; the words gate's mean would count them), as a model trained in its template reads them (SmolLM2's,
    whose template tokens are nc_chat_tokens, no words at all)."""
    import json

    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("chat-models")
    model = with_chat_template(SHIPPED, folder / "model")
    for runtime in SHIPPED.glob("*.py"):
        shutil.copyfile(ROOT / "modeling_nclama" / runtime.name, model / runtime.name)
    tokenizer = AutoTokenizer.from_pretrained(model)
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": ""}], add_generation_prompt=True,
                                             tokenize=False)
    template = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    weights = load_file(model / "model.safetensors")
    weights["nc_heads.call.keywords.weight"][template] = 0.0
    save_file({k: v for k, v in weights.items() if not k.startswith("nc_heads.gate_reader.")},
              model / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "nc_gate_reader": "hidden"}, indent=2))
    return model, with_chat_template(BASELINE, folder / "baseline")


@pytest.fixture(scope="module")
def chat_space(tmp_path_factory, chat_models):
    """The Space with both models: the shipped one (the default) and the stand-in as the SmolLM2 model."""
    model, baseline = chat_models
    process, url = serve_space(tmp_path_factory.mktemp("chat-space"), NCLAMA_SMOLLM2_MODEL=str(model),
                               NCLAMA_SMOLLM2_BASELINE=str(baseline))
    yield url
    stop(process)


@pytest.fixture(scope="module")
def chat_client(chat_space):
    return gradio_client.Client(chat_space, verbose=False)


def test_the_settings_offer_the_smollm2_model_once_its_folder_is_built(monkeypatch, tmp_path):
    settings = space_module("settings")
    for variable in ("NCLAMA_MODEL", "NCLAMA_BASELINE", "NCLAMA_SMOLLM2_MODEL", "NCLAMA_SMOLLM2_BASELINE"):
        monkeypatch.delenv(variable, raising=False)
    models = settings.Settings.from_env().models
    assert list(models) == ["nclama-tiny", SMOLLM2] and settings.DEFAULT_MODEL == "nclama-tiny"
    assert models["nclama-tiny"].model == str(SHIPPED) and models["nclama-tiny"].baseline == str(BASELINE)
    assert models["nclama-tiny"].built and models["nclama-tiny"].build == ()
    assert models[SMOLLM2].model == str(ROOT / "out" / "nclama-smollm2-135m-hub")
    assert models[SMOLLM2].baseline == str(ROOT / "out" / "smollm2") and list(models[SMOLLM2].build) == BUILD_SMOLLM2

    monkeypatch.setenv("NCLAMA_SMOLLM2_MODEL", str(tmp_path / "model"))
    monkeypatch.setenv("NCLAMA_SMOLLM2_BASELINE", str(tmp_path / "base"))
    chosen = settings.Settings.from_env()
    smollm2 = chosen.models[SMOLLM2]
    assert (smollm2.model, smollm2.baseline) == (str(tmp_path / "model"), str(tmp_path / "base"))
    assert not smollm2.built and list(chosen.built) == ["nclama-tiny"]
    assert smollm2.not_built(SMOLLM2) == (
        f"{SMOLLM2} is not built here: `{tmp_path / 'model'}` holds no config.json; build it from the project's root "
        f"with `{BUILD_SMOLLM2[0]}`, then `{BUILD_SMOLLM2[1]}`")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert list(settings.Settings.from_env().built) == ["nclama-tiny", SMOLLM2]


def test_a_worker_loads_a_model_the_first_time_a_request_names_it(chat_models, monkeypatch):
    model, baseline = chat_models
    monkeypatch.setitem(sys.modules, "settings", space_module("settings"))  # what engine.py imports, in a worker
    engine = space_module("engine").Engine({
        "nclama-tiny": {"model": str(SHIPPED), "baseline": str(BASELINE)},
        SMOLLM2: {"model": str(model), "baseline": str(baseline)},
    })
    served = engine.models[SMOLLM2]
    models = engine.info()["models"]
    assert models[SMOLLM2]["chat"] and not models["nclama-tiny"]["chat"] and models[SMOLLM2]["model"] == model.name
    assert not {"model", "library_off", "baseline"} & set(vars(served))  # its tokenizer and configuration only
    *_, trace = engine.generate("81273+4406=", 24, SMOLLM2, True)
    # the stand-in writes the library's 85679 first (it was never trained to stop in a template)
    assert trace["answer"] == _chat_answer(model, "81273+4406=") and trace["answer"].startswith("85679")
    assert "model" in vars(served)
    assert not {"library_off", "baseline"} & set(vars(served))  # what /compare needs waits for /compare


def test_the_default_model_still_answers_beside_a_second_one(chat_client):
    answer, trace = chat_client.predict("81273+4406=", 24, api_name="/generate")
    assert answer == "85679" and trace["model"] == "nclama-tiny" and not trace["chat"]
    assert "".join(trace["sequence"][:trace["prompt_length"]]) == "<|begin_of_text|>81273+4406="


def test_a_chat_model_is_asked_in_its_chat_template_and_traced(chat_client, chat_models):
    answer, trace = chat_client.predict("81273+4406=", 24, SMOLLM2, True, api_name="/generate")
    assert answer == _chat_answer(chat_models[0], "81273+4406=") and answer.startswith("85679")  # (see chat_models)
    assert trace["model"] == SMOLLM2 and trace["chat"] and trace["prompt"] == "81273+4406="
    sequence, prompt_length = trace["sequence"], trace["prompt_length"]
    # the prompt tokens are the rendered template: the question in the user's turn, the assistant's turn begun
    assert "".join(sequence[:prompt_length]) == "<|begin_of_text|>user: 81273+4406=\nassistant:"
    first = trace["tokens"][0]
    assert first["position"] == prompt_length and first["library_weight"] > 0.5
    assert first["site"] == prompt_length - 1 and sequence[first["site"]] == ":"  # the end of "assistant:"
    top = first["calls"][0]
    assert top["program"] == "long_add" and top["status"] == "ok" and top["result_text"] == "85679"
    # the operands point at the numbers inside the user's turn
    pointed = sorted("".join(sequence[o["start"]:o["end"]]) for o in top["operands"])
    user_turn = "".join(sequence[:min(o["start"] for o in top["operands"])])
    assert pointed == ["4406", "81273"] and user_turn == "<|begin_of_text|>user: "
    assert trace["machines"][first["machine"]]["program"] == "long_add"

    # as typed, the same model's prompt is the question alone
    answer, plain = chat_client.predict("81273+4406=", 24, SMOLLM2, False, api_name="/generate")
    assert answer == "85679" and not plain["chat"]
    assert "".join(plain["sequence"][:plain["prompt_length"]]) == "<|begin_of_text|>81273+4406="


def _chat_answer(folder: Path, prompt: str, library: bool = True) -> str:
    """What the model in ``folder`` answers to ``prompt`` in its chat template, computed here."""
    import torch
    from modeling_nclama.toolchain.evaluation import answer_text
    from modeling_nclama.toolchain.tasks import chat_prompt
    from modeling_nclama.toolchain.training import prompt_ids
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    if not library:
        model.library = None  # the runtime calls the library only while one is attached
    ids = torch.tensor(prompt_ids(tokenizer, [chat_prompt(prompt, tokenizer)]))
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return answer_text(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))


@pytest.mark.parametrize("question", ["What is 81273 plus 4406?", "Put [5, 3, 9, 1] in increasing order."])
def test_chat_questions_get_the_answers_the_models_give_in_their_template(chat_client, chat_models, question):
    model, baseline = chat_models
    answer, trace = chat_client.predict(question, 24, SMOLLM2, True, api_name="/generate")
    assert answer == _chat_answer(model, question)
    assert "".join(trace["sequence"][:trace["prompt_length"]]) == f"<|begin_of_text|>user: {question}\nassistant:"
    assert all(token["calls"] and "library_weight" in token for token in trace["tokens"])
    plain_baseline, library_off = chat_client.predict(question, 24, SMOLLM2, True, api_name="/compare")
    assert plain_baseline == _chat_answer(baseline, question)
    assert library_off == _chat_answer(model, question, library=False)


@pytest.mark.timeout(300)
def test_a_browser_asks_a_chat_example_of_the_second_model(chat_space, chat_client, browser):
    question = "Put [5, 3, 9, 1] in increasing order."
    expected, _ = chat_client.predict(question, 24, SMOLLM2, True, api_name="/generate")
    page = browser.new_page(viewport={"width": 1400, "height": 2000})
    try:
        page.goto(chat_space)
        page.wait_for_selector("#model")
        assert not page.locator("#chat").is_visible()  # the default model has no chat template
        page.locator("#model label").filter(has_text=SMOLLM2).click()
        page.locator("#chat").wait_for(state="visible")
        assert "chat template" in page.locator("#model-note").inner_text()
        assert not page.locator("#chat input").is_checked()
        page.get_by_text(question).click()  # a chat-style example: the question, and the chat option ticked
        page.wait_for_function("document.querySelector('#chat input').checked")
        assert page.locator("#prompt textarea").input_value() == question
        page.locator("#generate").click()
        page.wait_for_selector("#heatmap img", timeout=120_000)
        assert page.locator("#answer textarea").input_value() == expected
        assert "Token 1 of" in page.locator("#token-summary").inner_text()
        highlighted = page.locator("#operands .token .text").all_inner_texts()
        assert "".join(highlighted).startswith("<|begin_of_text|>user: Put [5, 3, 9, 1]")  # the template's tokens
        page.wait_for_function("document.querySelector('#baseline textarea').value !== ''", timeout=60_000)
        assert "Plain baseline (baseline)" in page.locator("#baseline").inner_text()
        page.wait_for_function("document.querySelectorAll('.pending').length === 0")
        page.screenshot(path=str(ARTIFACTS / "space_chat.png"), full_page=True)
        # back to the default model the chat option goes; it comes back unticked
        page.locator("#model label").filter(has_text="nclama-tiny").click()
        page.locator("#chat").wait_for(state="hidden")
        page.locator("#model label").filter(has_text=SMOLLM2).click()
        page.locator("#chat").wait_for(state="visible")
        assert not page.locator("#chat input").is_checked()
    finally:
        page.close()
