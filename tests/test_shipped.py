"""The shipped models in hub_assets/: complete Hub repo folders that load with the Auto classes, small, with their
evaluation results in their model cards."""
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from modeling_nclama.toolchain.tasks import CANONICAL

ASSETS = Path(__file__).resolve().parents[1] / "hub_assets"
NCLAMA, BASELINE = ASSETS / "nclama-tiny", ASSETS / "llama-tiny-baseline"


def test_the_two_folders_are_small_and_complete():
    size = sum(p.stat().st_size for folder in (NCLAMA, BASELINE) for p in folder.rglob("*") if p.is_file())
    assert size < 50e6
    for folder in (NCLAMA, BASELINE):
        files = {p.name for p in folder.iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "eval_results.json"} <= files
        assert not [name for name in files if name.endswith((".bin", ".pt", ".pkl"))]  # nothing pickled
        rows = json.loads((folder / "eval_results.json").read_text())["rows"]
        card = (folder / "README.md").read_text()
        assert rows and all(f"| {r['task']} | {r.get('split', 'train')} | {r.get('form', 'plain')} | {r['length']} |" in card
                            for r in rows)
    assert {"library.json", "library.safetensors", "modeling_nclama.py"} <= {p.name for p in NCLAMA.iterdir()}


@pytest.mark.parametrize("folder", [NCLAMA, ASSETS / "nclama-smollm2-135m"])
def test_the_reader_table_is_the_tokenizers_and_not_in_config_json(folder):
    """The reader's token table is what tokenization.reader_tokens derives from the folder's own tokenizer (and the
    words its results are written as), saved beside config.json; config.json lists no tokens."""
    from modeling_nclama.toolchain.tokenization import reader_tokens
    from modeling_nclama.toolchain.training import _result_words

    config = json.loads((folder / "config.json").read_text())
    assert "nc_reader_tokens" not in config
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    nc = {k: v for k, v in config.items() if k.startswith("nc_")}
    derived = reader_tokens(tokenizer, words=_result_words(nc, tokenizer))
    assert json.loads((folder / "reader_tokens.json").read_text()) == derived


def test_the_shipped_runtime_is_this_runtime():
    """The folder carries copies of the runtime files (a Hub repo needs them): a runtime change must be re-exported."""
    runtime = Path(__file__).resolve().parents[1] / "modeling_nclama"
    shipped = sorted(p.name for p in NCLAMA.glob("*.py"))
    assert shipped == sorted(p.name for p in runtime.glob("*.py") if p.name != "__init__.py")  # every runtime module
    assert all((NCLAMA / name).read_text() == (runtime / name).read_text() for name in shipped), shipped


@pytest.fixture(scope="module")
def nclama():
    model = AutoModelForCausalLM.from_pretrained(NCLAMA, trust_remote_code=True).eval()
    return model, AutoTokenizer.from_pretrained(NCLAMA, trust_remote_code=True)


def generate(model, tok, prompt: str) -> str:
    inputs = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    return tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).split("\n")[0].strip()


def test_the_shipped_nclama_answers_with_its_library(nclama):
    model, tok = nclama
    assert type(model).__name__ == "NCLlamaForCausalLM" and model.library is not None
    prompt, answer = next((p, a) for p, a in CANONICAL if p == "81273+4406=")
    assert generate(model, tok, prompt) == answer
    sequence, trace = model.generate_with_trace(tok(prompt, return_tensors="pt")["input_ids"], max_new_tokens=6, do_sample=False)
    assert trace[0]["gate"] > 0.9 and trace[0]["calls"][0]["program"] == "long_add"  # computed by the library


def test_the_baseline_is_a_plain_llama():
    model = AutoModelForCausalLM.from_pretrained(BASELINE).eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert generate(model, AutoTokenizer.from_pretrained(BASELINE), "3+4=")  # it writes something


def test_the_configurations_defaults_build_the_shipped_design():
    """NCLlamaConfig() with nclama-tiny's shape and library is nclama-tiny's design: every head and execution setting
    the shipped config holds is the default (the layer counted from the end)."""
    import json

    from modeling_nclama.configuration_nclama import NCLlamaConfig

    shipped = json.loads((NCLAMA / "config.json").read_text())
    default = NCLlamaConfig(num_hidden_layers=shipped["num_hidden_layers"])
    design = ("nc_mode", "nc_top_k", "nc_operand_reader", "nc_call_reader", "nc_call_layer", "nc_site_reader",
              "nc_gate_reader", "nc_gate_at", "nc_max_operands", "nc_max_candidates", "nc_answer_lead", "nc_residual_injection",
              "nc_min_call_probability", "nc_max_steps", "nc_value_size", "nc_stack_depth", "nc_decimal_places",
              "nc_closers_from_lm", "nc_openers_from_lm")
    assert {k: getattr(default, k) for k in design} == {k: shipped[k] for k in design}
    layers = shipped["num_hidden_layers"]
    assert default.nc_layer % layers == shipped["nc_layer"] % layers
