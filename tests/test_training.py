"""nclama train: recipes, the Trainer run (checkpoints with the library, resume, trainable globs, probes), torchrun
data parallel on CPU, the README's Trainer example. Everything tiny: a 2-layer, 64-wide LLaMA, a few steps."""
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from modeling_nclama.toolchain.cli import main
from modeling_nclama.toolchain.tasks import TASKS, TRAINING_RANGES, make_dataset
from modeling_nclama.toolchain.training import (
    TASK_PROGRAMS, Collator, RecipeError, apply_overrides, apply_trainable, build_model, build_probes, load_recipe,
    probe_model, tokenize, validate_recipe,
)

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2}


def write(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """A tiny LLaMA trained 3 steps by `nclama train` from an init recipe (the base the other tests convert)."""
    where = tmp_path_factory.mktemp("baseline")
    recipe = write(where / "llama.yaml", {
        "model": {"init": {"preset": "tiny", "kind": "llama", "config": SMALL}},
        "data": {"tasks": ["add", "max"], "n": 24, "lengths": [2, 3]},
        "training": {"max_steps": 3, "per_device_train_batch_size": 4, "logging_steps": 1, "save_steps": 3,
                     "disable_tqdm": True},
        "eval": {"tasks": ["add"], "lengths": [1], "n": 2},
    })
    assert main(["train", "--recipe", str(recipe), "--output-dir", str(where / "out")]) == 0
    return where / "out"


# ---------------------------------------------------------------------------------------------------- recipes
GOOD_MODEL = {"init": {"preset": "tiny", "kind": "llama"}}


@pytest.mark.parametrize("recipe, message", [
    ({"data": {}}, "recipe: missing key 'model'"),
    ({"model": GOOD_MODEL, "optimizer": {}}, "unknown key 'optimizer'"),
    ({"model": {}}, "model: needs exactly one of init, from_llama, from_pretrained"),
    ({"model": {"init": {"preset": "huge"}}}, "model.init.preset: unknown preset 'huge'"),
    ({"model": {"init": {"preset": "tiny", "kind": "gpt"}}}, "model.init.kind: must be one of llama, nclama, got 'gpt'"),
    ({"model": {"init": {"preset": "tiny", "kind": "llama", "library": {"value_size": 1024}}}}, "kind llama has no library"),
    ({"model": {"from_llama": {"path": "x", "nc": {"top_kk": 3}}}}, "model.from_llama.nc: unknown setting 'top_kk'"),
    ({"model": {"from_llama": {"path": "x", "nc": {"nc_value_size": 512}}}}, "nc_value_size: set by library.value_size"),
    ({"model": {"from_llama": {"path": "x", "library": {"value_size": "big"}}}}, "library.value_size: must be an int"),
    ({"model": {"from_llama": {"nc": {}}}}, "model.from_llama: missing key 'path'"),
    ({"model": GOOD_MODEL, "trainable": "heads"}, "trainable: must be 'all' or a non-empty list"),
    ({"model": GOOD_MODEL, "data": {"tasks": ["add", "divide"]}}, "data.tasks: unknown task 'divide'"),
    ({"model": GOOD_MODEL, "data": {"loss_on": "prompt"}}, "data.loss_on: must be one of all, answer, got 'prompt'"),
    ({"model": GOOD_MODEL, "data": {"n": 0}}, "data.n: must be an int >= 1, got 0"),
    ({"model": GOOD_MODEL, "data": {"tasks": ["add"], "lengths": {"sort": [2, 4]}}}, "data.lengths.sort: not a task of data.tasks"),
    ({"model": GOOD_MODEL, "data": {"tasks": ["add"], "lengths": {"add": [5, 2]}}}, "data.lengths.add: low 5 is above high 2"),
    ({"model": GOOD_MODEL, "data": {"tasks": ["max"], "lengths": [0]}}, "data.lengths: length 0 is not valid for max"),
    ({"model": GOOD_MODEL, "training": {"learning_rat": 0.1}}, "training: 'learning_rat' is not a TrainingArguments field"),
    ({"model": GOOD_MODEL, "training": {"output_dir": "x"}}, "--output-dir"),
    ({"model": GOOD_MODEL, "probe": {"steps": 5}}, "probe.steps: probes read an NCLlama's interpreter"),
    ({"model": GOOD_MODEL, "eval": {"split": "test"}}, "eval.split: must be one of train, heldout"),
    ({"model": GOOD_MODEL, "training": {"heads_learning_rate": 0}}, "training.heads_learning_rate: must be a positive number"),
    ({"model": GOOD_MODEL, "training": {"tables_learning_rate": -1, "heads_learning_rate": 1e-3}},
     "training.tables_learning_rate: must be a positive number"),
    ({"model": GOOD_MODEL, "training": {"tables_learning_rate": 0.01}}, "tables_learning_rate: needs heads_learning_rate"),
    ({"model": GOOD_MODEL, "final_config": {"max_steps": 5}}, "final_config: must be a mapping of nc_* settings"),
    ({"model": GOOD_MODEL, "training": {"gate_learning_floor": 1.5}}, "training.gate_learning_floor must be in [0, 1]"),
    ({"model": GOOD_MODEL, "training": {"gate_target_weight": -1}}, "training.gate_target_weight must be a number >= 0"),
    ({"model": {"from_llama": {"path": "x", "nc": {"gate_learning_floor": 0.1}}}}, "unknown setting 'gate_learning_floor'"),
    ({"model": GOOD_MODEL, "data": {"tasks": ["add"], "max_value": 9}}, "data.max_value: max_value caps list items; add has no list"),
    ({"model": GOOD_MODEL, "eval": {"tasks": ["sort"], "max_value": -1}}, "eval.max_value: max_value must be a positive int"),
])
def test_recipe_errors_name_the_key(recipe, message):
    with pytest.raises(RecipeError) as error:
        validate_recipe(recipe, "r.yaml")
    assert str(error.value).startswith("r.yaml: ") and message in str(error.value)


def test_recipe_defaults_and_overrides():
    recipe = validate_recipe(apply_overrides({"model": GOOD_MODEL}, {"training.max_steps": 7, "data.loss_on": "answer"}))
    assert recipe["trainable"] == "all" and recipe["data"]["tasks"] == list(TASKS)
    assert recipe["data"]["lengths"] == {t: list(TRAINING_RANGES[t]["length"]) for t in TASKS}
    assert recipe["data"]["loss_on"] == "answer"
    assert recipe["training"] == {"max_steps": 7} and recipe["probe"]["steps"] == 0 and recipe["eval"] is None
    nc = validate_recipe({"model": {"from_llama": {"path": "p", "nc": {"top_k": 2, "nc_layer": -2}}}})
    assert nc["model"]["from_llama"]["nc"] == {"nc_top_k": 2, "nc_layer": -2}


def test_cli_reports_a_bad_recipe(tmp_path, capsys):
    recipe = write(tmp_path / "bad.yaml", {"model": GOOD_MODEL, "data": {"loss_on": "everything"}})
    assert main(["train", "--recipe", str(recipe), "--output-dir", str(tmp_path / "out")]) == 2
    assert "data.loss_on: must be one of all, answer, got 'everything'" in capsys.readouterr().err
    assert main(["train", "--recipe", str(recipe), "--output-dir", "x", "--set", "data.loss_on=answer",
                 "--set", "training.nonsense=1"]) == 2
    assert "'nonsense' is not a TrainingArguments field" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_committed_recipes():
    base, nc = load_recipe(ROOT / "configuration/recipes/llama-tiny-baseline.yaml"), load_recipe("nclama-tiny")
    assert base["model"]["init"]["kind"] == "llama" and base["data"]["loss_on"] == "all"
    assert base["data"]["tasks"] == list(TASKS) and nc["data"]["tasks"] == list(TASKS)
    for recipe in (base, nc):  # the training ranges are tasks.TRAINING_RANGES, restated
        assert recipe["data"]["lengths"] == {t: list(TRAINING_RANGES[t]["length"]) for t in TASKS}
        assert recipe["eval"] is not None
    spec = nc["model"]["from_llama"]
    assert spec["path"] == "hub_assets/llama-tiny-baseline" and spec["library"] == {"value_size": 1024}
    assert nc["probe"]["steps"] > 0
    for path in sorted((ROOT / "configuration/recipes").glob("*.yaml")):  # every committed recipe is valid
        load_recipe(path)
    # the experiment pairs differ only where they say they do
    hard, soft = load_recipe("sort-hard-tiny"), load_recipe("sort-soft-tiny")
    soft["model"]["from_llama"]["nc"]["nc_mode"] = "hard"
    assert hard == soft and hard["data"]["max_value"] == 31 == hard["eval"]["max_value"]
    clrs_llama, clrs_nclama = load_recipe("clrs-llama-tiny"), load_recipe("clrs-nclama-tiny")
    assert clrs_llama["data"] == clrs_nclama["data"] and clrs_llama["eval"] == clrs_nclama["eval"]
    assert clrs_nclama["model"]["from_llama"]["nc"]["nc_decimal_places"] == 3


# ---------------------------------------------------------------------------------------------------- data
def test_data_tokenization_masks_the_prompt_and_pads_per_batch():
    from modeling_nclama.toolchain.tokenization import BOS, EOS
    from modeling_nclama.toolchain.training import _examples

    data = validate_recipe({"model": GOOD_MODEL, "data": {"tasks": ["add", "sort", "gcd"], "n": 7, "seed": 3,
                                                          "clrs_insertion_sort": 2}})["data"]
    examples = _examples(data)  # round robin, as make_dataset, plus the CLRS examples
    assert examples["text"][:7] == make_dataset(["add", "sort", "gcd"], 7, seed=3)["text"]
    assert examples["task"][7:] == ["clrs_insertion_sort"] * 2
    data = validate_recipe({"model": GOOD_MODEL, "data": {"tasks": ["add", "sort"], "n": 40,
                                                          "lengths": {"add": [3, 4]}}})["data"]
    assert data["lengths"] == {"add": [3, 4], "sort": [0, 16]}
    examples = _examples(data)
    assert {n for t, n in zip(examples["task"], examples["length"]) if t == "add"} == {3, 4}
    assert max(n for t, n in zip(examples["task"], examples["length"]) if t == "sort") > 4

    class Tok:  # characters as tokens: 1 (bos), then the text, then 2 (eos)
        eos_token_id, pad_token_id, bos_token_id = 2, 0, 1

        def __call__(self, texts, add_special_tokens=True):
            return {"input_ids": [([1] if add_special_tokens else []) + [ord(c) for c in t] for t in texts]}

    assert BOS and EOS
    rows = [{"prompt": "1+2=", "text": "1+2=3"}, {"prompt": "Is 1 less than 2?", "text": "Is 1 less than 2? yes"}]
    from datasets import Dataset

    both = tokenize(Dataset.from_list(rows), Tok(), loss_on="answer")
    assert both[0]["input_ids"] == [1, *map(ord, "1+2=3"), 2] and both[0]["labels"] == [-100] * 5 + [ord("3"), 2]
    assert both[1]["labels"][-5:] == [*map(ord, " yes"), 2] and set(both[1]["labels"][:-5]) == {-100}
    assert tokenize(Dataset.from_list(rows), Tok(), loss_on="all")[0]["labels"] == both[0]["input_ids"]
    assert len(tokenize(Dataset.from_list(rows), Tok(), max_length=10)) == 1  # the longer one is dropped
    batch = Collator(Tok())([both[0], both[1]])
    assert batch["input_ids"].shape == (2, len(both[1]["input_ids"]))
    assert batch["input_ids"][0, 7:].eq(0).all() and batch["labels"][0, 7:].eq(-100).all()
    assert batch["attention_mask"].sum(1).tolist() == [7, len(both[1]["input_ids"])]


# ---------------------------------------------------------------------------------------------------- runs
def test_llama_recipe_trains_saves_and_reloads(baseline):
    from transformers import AutoTokenizer, LlamaForCausalLM

    log = json.loads((baseline / "train_log.json").read_text())
    losses = [row["loss"] for row in log["log_history"] if "loss" in row]
    assert len(losses) == 3 and all(l > 0 for l in losses)
    assert log["global_step"] == 3 and log["world_size"] == 1 and log["kind"] == "llama" and log["wall_time_s"] > 0
    assert log["trainable_parameters"] == log["total_parameters"] > 0
    assert {"config.json", "model.safetensors", "tokenizer.json", "recipe.yaml", "eval_results.json"} <= {
        p.name for p in baseline.iterdir()}
    assert (baseline / "checkpoint-3" / "trainer_state.json").is_file()
    # the trained model generates with its KV cache (Trainer switches it off for training)
    assert json.loads((baseline / "config.json").read_text())["use_cache"] is True
    assert json.loads((baseline / "generation_config.json").read_text())["use_cache"] is True
    copy = validate_recipe(yaml.safe_load((baseline / "recipe.yaml").read_text()))  # the recipe as it ran
    assert copy["training"]["max_steps"] == 3 and copy["model"]["init"]["config"] == SMALL
    rows = json.loads((baseline / "eval_results.json").read_text())["rows"]
    assert [(r["task"], r["length"], r["n"]) for r in rows] == [("add", 1, 2)]
    model = LlamaForCausalLM.from_pretrained(baseline)
    tok = AutoTokenizer.from_pretrained(baseline)
    assert model.config.hidden_size == 64 and model.config.eos_token_id == tok.eos_token_id
    with torch.no_grad():
        assert torch.isfinite(model(**tok(["12+3="], return_tensors="pt")).logits).all()


def test_nclama_checkpoints_carry_the_library_and_resume(baseline, tmp_path):
    from modeling_nclama.modeling_nclama import NCLlamaForCausalLM

    recipe = write(tmp_path / "nc.yaml", {
        "model": {"from_llama": {"path": str(baseline), "nc": {"top_k": 2, "max_steps": 2000}, "library": {"value_size": 256}}},
        "data": {"tasks": ["add", "max"], "n": 16, "lengths": [2], "loss_on": "answer"},
        "training": {"max_steps": 2, "per_device_train_batch_size": 2, "logging_steps": 1, "save_steps": 2,
                     "disable_tqdm": True, "heads_learning_rate": 0.01},
        "probe": {"steps": 2, "per_task": 1},
        "final_config": {"nc_max_steps": 3000},
    })
    out = tmp_path / "out"
    assert main(["train", "--recipe", str(recipe), "--output-dir", str(out)]) == 0
    checkpoint = out / "checkpoint-2"
    assert (checkpoint / "library.json").is_file() and (checkpoint / "library.safetensors").is_file()
    reloaded = NCLlamaForCausalLM.from_pretrained(checkpoint)
    assert reloaded.library is not None and reloaded.config.nc_top_k == 2
    assert reloaded.config.nc_base_model == str(baseline) and reloaded.config.nc_max_steps == 2000  # as trained
    assert json.loads((out / "config.json").read_text())["nc_max_steps"] == 3000  # final_config, after training
    rates = [row["learning_rate"] for row in json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
             if "learning_rate" in row]
    assert rates and rates[0] == pytest.approx(0.01)  # the Trainer logs the first group's rate: the heads' own
    assert (out / "library.json").is_file() and (out / "modeling_nclama.py").is_file()  # the final model too
    log = json.loads((out / "train_log.json").read_text())
    probes = [row for row in log["log_history"] if "probe/gate" in row]
    assert [row["step"] for row in probes] == [0, 2]  # before the first step and at step 2
    assert {"probe/add/gate", "probe/add/call_accuracy", "probe/max/call_accuracy", "probe/call_accuracy"} <= set(probes[0])
    assert 0 <= probes[-1]["probe/gate"] <= 1
    # --resume continues from checkpoint-2 (optimizer, scheduler, step) up to the new max_steps
    assert main(["train", "--recipe", str(recipe), "--output-dir", str(out), "--resume", "--max-steps", "3",
                 "--save-steps", "3", "--probe-steps", "0"]) == 0
    log = json.loads((out / "train_log.json").read_text())
    assert log["resumed_from"] == str(checkpoint) and log["global_step"] == 3
    steps = [row["step"] for row in log["log_history"] if "loss" in row]
    assert steps == [1, 2, 3]  # the history carried over from the checkpoint, then step 3
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3


def test_trainable_globs_freeze_the_rest(baseline):
    recipe = validate_recipe({"model": {"from_llama": {"path": str(baseline), "library": {"value_size": 256}}}})
    model, tok, kind = build_model(recipe["model"])
    assert kind == "nclama"
    count, total = apply_trainable(model, ["nc_heads.*"])
    heads = sum(p.numel() for p in model.nc_heads.parameters())
    assert count == heads < total
    assert all(p.requires_grad == n.startswith("nc_heads.") for n, p in model.named_parameters())
    with torch.no_grad():
        model.nc_heads.gate_scale.fill_(0.5)  # open the gate, so the heads get gradients
    batch = tok(["12+34=46"], return_tensors="pt")
    model(**batch, labels=batch["input_ids"]).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all(n.startswith("nc_heads.") for n in with_grad)
    # a prefix (no glob) works too; a tied embedding trains through either of its names
    apply_trainable(model, ["model.layers.1", "lm_head"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "model.embed_tokens.weight" in trainable and any(n.startswith("model.layers.1.") for n in trainable)
    assert not any(n.startswith(("model.layers.0.", "nc_heads.")) for n in trainable)
    with pytest.raises(RecipeError, match="'decoder.*' matches no parameter"):
        apply_trainable(model, ["decoder.*"])


def test_probes_read_the_gate_and_the_call(baseline):
    recipe = validate_recipe({"model": {"from_llama": {"path": str(baseline), "library": {"value_size": 256}}}})
    model, tok, _ = build_model(recipe["model"])
    probes = build_probes(tok, ["add", "less_than"], per_task=1, seed=0)
    for probe in probes:  # the prefix ends right before the answer's first (non-space) token
        row = make_dataset([probe["task"]], 1, seed=0)[0]
        first = tok.decode(probe["ids"][probe["prefix_length"]:]).strip()  # " yes" is one token
        assert len(probe["ids"]) == probe["prefix_length"] + 1 and first and row["answer"].startswith(first)
        assert tok.decode(probe["ids"][: probe["prefix_length"]], skip_special_tokens=True).strip() == row["prompt"]
    metrics = probe_model(model, probes)
    assert metrics["probe/gate"] == 0.0  # a converted model starts with the gate closed
    assert set(metrics) == {"probe/add/gate", "probe/add/call_accuracy", "probe/less_than/gate",
                            "probe/less_than/call_accuracy", "probe/gate", "probe/call_accuracy"}
    assert TASK_PROGRAMS["clrs_insertion_sort"] == ("insertion_sort",) and set(TASK_PROGRAMS) >= set(TASKS)
    assert model.training  # restored


def test_torchrun_two_processes_on_cpu(baseline, tmp_path):
    recipe = write(tmp_path / "ddp.yaml", {
        "model": {"from_pretrained": str(baseline)},
        "data": {"tasks": ["add"], "n": 16, "lengths": [1, 2]},
        "training": {"max_steps": 2, "per_device_train_batch_size": 2, "logging_steps": 1, "save_steps": 2,
                     "disable_tqdm": True},
    })
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "modeling_nclama.toolchain.cli", "train", "--recipe", str(recipe), "--output-dir", str(tmp_path / "out")]
    run = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    try:
        output, _ = run.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)  # the launcher and both workers (their own session)
        output, _ = run.communicate()
        pytest.fail("torchrun did not finish in 240 s:\n" + output[-3000:])
    assert run.returncode == 0, output[-3000:]
    assert "[rank 0/2]" in output and "[rank 1/2]" in output  # both ranks trained
    log = json.loads((tmp_path / "out" / "train_log.json").read_text())
    assert log["world_size"] == 2 and log["global_step"] == 2
    # 16 examples, 2 per device on 2 ranks: 4 steps an epoch
    assert [row["epoch"] for row in log["log_history"] if "loss" in row] == [0.25, 0.5]
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_training_arguments_defaults():
    from modeling_nclama.toolchain.training import training_arguments

    nc = training_arguments({}, "unused", "nclama")
    assert nc.ddp_find_unused_parameters is True and nc.use_cpu is not torch.cuda.is_available()
    assert nc.report_to in ("none", [], ["none"]) and nc.dataloader_num_workers == 0 and not nc.remove_unused_columns
    llama = training_arguments({"learning_rate": 0.5, "logging_steps": 3}, "unused", "llama")
    assert llama.ddp_find_unused_parameters is False and llama.learning_rate == 0.5 and llama.logging_steps == 3
    with pytest.raises(RecipeError, match="training: "):
        training_arguments({"lr_scheduler_type": "sometimes"}, "unused", "llama")


def test_the_token_tables_get_their_own_learning_rate(make_llama, user_lib):
    from transformers import TrainingArguments

    from modeling_nclama.modeling_nclama import NCLlamaForCausalLM
    from modeling_nclama.toolchain.tokenization import default_tokenizer, reader_tokens
    from modeling_nclama.toolchain.training import heads_optimizer

    tok = default_tokenizer()
    model = NCLlamaForCausalLM.from_llama(make_llama(tok), user_lib, design="paper", reader_tokens=reader_tokens(tok),
                                          nc_call_reader="keywords", nc_site_reader="tokens", nc_operand_reader="context")
    args = TrainingArguments(output_dir="unused", learning_rate=1e-4, report_to=[])
    rate_of = {id(p): group["lr"] for group in heads_optimizer(model, args, 1e-3, 1e-2).param_groups for p in group["params"]}
    named = dict(model.named_parameters())
    tables = ["call.keywords", "sites.token", "sites.previous", "operands.before", "operands.after", "operands.rank"]
    assert {n: rate_of[id(named[f"nc_heads.{n}.weight"])] for n in tables} == dict.fromkeys(tables, 1e-2)
    heads = {n for n in named if n.startswith("nc_heads.") and n[len("nc_heads."):].removesuffix(".weight") not in tables}
    assert heads and {rate_of[id(named[n])] for n in heads} == {1e-3}
    assert {rate_of[id(p)] for n, p in named.items() if not n.startswith("nc_heads.")} == {1e-4}
    assert len(rate_of) == len(named)
    default = {group["lr"] for group in heads_optimizer(model, args, 1e-3).param_groups}
    assert default == {1e-3, 1e-4}  # without its own rate the table learns at the heads' rate
    scale = heads_optimizer(model, args, 1e-3, 1e-2, 2e-2).param_groups
    assert [g["lr"] for g in scale if any(p is model.nc_heads.gate_scale for p in g["params"])] == [2e-2]
    assert [len(g["params"]) for g in scale if g["lr"] == 2e-2] == [1]  # the scale alone
    with pytest.raises(RecipeError, match="gate_scale_learning_rate: needs heads_learning_rate"):
        validate_recipe({"model": GOOD_MODEL, "training": {"gate_scale_learning_rate": 0.1}})


# ---------------------------------------------------------------------------------------------------- chat, frozen decoder
@pytest.mark.parametrize("section, message", [
    ({"data": {"chat": 1.5}}, "data.chat: must be a fraction in [0, 1], got 1.5"),
    ({"data": {"chat": True}}, "data.chat: must be a fraction in [0, 1], got True"),
    ({"eval": {"chat": "yes"}}, "eval.chat: must be true or false, got 'yes'"),
    ({"probe": {"chat": 1}}, "probe.chat: must be true or false, got 1"),
    ({"probe": {"heldout": -1}}, "probe.heldout: must be an int >= 0, got -1"),
])
def test_chat_and_probe_settings_are_checked(section, message):
    with pytest.raises(RecipeError, match=re.escape(message)):
        validate_recipe({"model": GOOD_MODEL, **section})
    defaults = validate_recipe({"model": GOOD_MODEL, "eval": {}})
    assert defaults["data"]["chat"] == 0.0 and defaults["eval"]["chat"] is False
    assert defaults["probe"]["heldout"] == 0 and defaults["probe"]["chat"] is None


def test_the_smollm2_recipe():
    """nclama-smollm2-135m: SmolLM2 from out/smollm2, nclama-tiny's programs and library, the decoder frozen with the
    heads on its last layer (no residual injection: nothing needs a backward through it), the call read from the
    pretrained hidden states of the question's words at layer 15, data in plain and chat form with nclama-tiny's
    signed numbers and context examples."""
    smol, tiny = load_recipe("nclama-smollm2-135m"), load_recipe("nclama-tiny")
    spec, nc = smol["model"]["from_llama"], smol["model"]["from_llama"]["nc"]
    assert spec["path"] == "out/smollm2" and spec["library"] == tiny["model"]["from_llama"]["library"] == {"value_size": 1024}
    assert nc["nc_programs"] == tiny["model"]["from_llama"]["nc"]["nc_programs"] and len(nc["nc_programs"]) == 11
    assert smol["trainable"] == ["nc_heads.*"] and nc["nc_call_reader"] == "sentence" and nc["nc_call_layer"] == 15
    assert nc["nc_gate_reader"] == "hidden"  # held-out wordings' words are unknown to a word table
    assert nc["nc_layer"] == -1 and not nc.get("nc_residual_injection", False)
    assert 0 < smol["data"]["chat"] < 1 and smol["data"]["context"] > 0 and smol["data"]["tasks"] == list(TASKS)
    assert smol["data"]["lengths"] == {t: list(TRAINING_RANGES[t]["length"]) for t in TASKS}
    assert smol["probe"]["heldout"] > 0 and smol["data"]["loss_on"] == "answer"


def test_a_frozen_decoder_needs_no_backward(make_llama, user_lib):
    """With only the heads trainable and the heads on the last layer, no decoder layer's output requires a gradient
    (the step's backward runs through the heads alone); residual injection at a middle layer would put every later
    layer in the backward."""
    from modeling_nclama.heads import HeadsTraining
    from modeling_nclama.modeling_nclama import NCLlamaForCausalLM
    from modeling_nclama.toolchain.tokenization import default_tokenizer, reader_tokens

    tok = default_tokenizer()
    batch = tok(["12+34=46", "What is 5 plus 3? 8"], return_tensors="pt", padding=True)

    def layers_in_backward(**nc):
        model = NCLlamaForCausalLM.from_llama(make_llama(tok), user_lib, design="paper", reader_tokens=reader_tokens(tok),
                                              nc_operand_reader="context", **nc)
        model.heads_training = HeadsTraining(gate_learning_floor=0.1)
        apply_trainable(model, ["nc_heads.*"])
        model.train()
        needs = []
        hooks = [layer.register_forward_hook(lambda m, a, out, i=i: needs.append((i, (out[0] if isinstance(out, tuple) else out).requires_grad)))
                 for i, layer in enumerate(model.model.layers)]
        loss = model(**batch, labels=batch["input_ids"]).loss
        for hook in hooks:
            hook.remove()
        loss.backward()
        assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("nc_heads."))
        assert any(p.grad is not None for p in model.nc_heads.parameters())
        return [i for i, needed in needs if needed]

    assert layers_in_backward(nc_layer=-1) == []
    assert layers_in_backward(nc_layer=0, nc_residual_injection=True) == [1]  # injected after layer 0: layer 1 on


def test_chat_form_training_data_and_probes():
    from test_chat import chatml_tokenizer

    from modeling_nclama.toolchain.training import build_train_dataset

    tok = chatml_tokenizer()
    data = validate_recipe({"model": GOOD_MODEL, "data": {"tasks": ["add", "less_than"], "n": 40, "seed": 2,
                                                          "context": 6, "chat": 0.5, "loss_on": "answer"}})["data"]
    dataset = build_train_dataset(data, tok)
    start, end = (tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>"))
    chat = [row for row in dataset if start in row["input_ids"]]
    assert 10 < len(chat) < 36 and len(dataset) == 46
    for row in chat:  # the loss is on the answer in the assistant's turn and the end of the turn (eos) only
        answer = [t for t, label in zip(row["input_ids"], row["labels"]) if label != -100]
        assert tok.decode(row["input_ids"][: len(row["input_ids"]) - len(answer)]).endswith("<|im_start|>assistant\n")
        assert answer[-1] == tok.eos_token_id and start not in answer and end not in answer
    probes = build_probes(tok, ["add", "sort"], per_task=1, seed=0, heldout=1, chat=True)
    groups = [p["group"] for p in probes]
    assert groups == ["add", "heldout", "sort", "heldout"] + ["chat", "chat_heldout"] * 2
    for probe in probes[4:]:  # the prefix ends with the assistant's turn: the next token is the answer's first
        assert tok.decode(probe["ids"][: probe["prefix_length"]]).endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("reader", [{}, {"nc_call_reader": "sentence", "nc_call_layer": 0}], ids=["hidden", "sentence"])
def test_the_frozen_decoder_cache_gives_the_decoders_states(make_llama, user_lib, reader):
    """The stand-in returns what the decoder computes (right-padded batches, each example keyed by its tokens; and
    the states of the call reader's own layer where it reads another), runs the decoder only for examples it has
    not kept, and the step's loss and gradients are those of the real decoder."""
    from modeling_nclama.heads import HeadsTraining
    from modeling_nclama.modeling_nclama import NCLlamaForCausalLM
    from modeling_nclama.toolchain.tokenization import default_tokenizer, reader_tokens
    from modeling_nclama.toolchain.training import FrozenDecoderCache

    tok = default_tokenizer()
    model = NCLlamaForCausalLM.from_llama(make_llama(tok), user_lib, design="paper", reader_tokens=reader_tokens(tok),
                                          nc_operand_reader="context", **reader)
    model.heads_training = HeadsTraining(gate_learning_floor=0.1)
    apply_trainable(model, ["nc_heads.*"])
    model.train()
    rows = tokenize(make_dataset(["add", "max"], 4, seed=0), tok, loss_on="answer")
    batch = Collator(tok)([rows[i] for i in range(4)])

    def step():
        model.zero_grad()
        loss = model(**batch)["loss"]
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.nc_heads.named_parameters() if p.grad is not None}

    real_loss, real_grads = step()
    cache = FrozenDecoderCache(model)
    for _ in range(2):  # computed, then read back
        cache.on_step_begin(None, None, None)
        loss, grads = step()
        cache.on_step_end(None, None, None)
        assert model.model is cache.decoder
        assert torch.allclose(loss, real_loss, atol=1e-5) and grads.keys() == real_grads.keys()
        assert all(torch.allclose(grads[n], real_grads[n], atol=1e-5) for n in grads)
    assert (cache.stand_in.computed, cache.stand_in.reused) == (4, 4)
    assert not any(k.startswith("model.decoder.") for k in model.state_dict())  # names unchanged outside the steps
    apply_trainable(model, ["nc_heads.*", "lm_head"])
    with pytest.raises(RecipeError, match="the decoder must be frozen"):
        FrozenDecoderCache(model)
    mid = NCLlamaForCausalLM.from_llama(make_llama(tok), user_lib, design="paper", reader_tokens=reader_tokens(tok), nc_layer=0,
                                        nc_residual_injection=True)
    apply_trainable(mid, ["nc_heads.*"])
    with pytest.raises(RecipeError, match="nc_layer: -1"):
        FrozenDecoderCache(mid)


def test_a_recipe_trains_with_the_frozen_decoder_cache(baseline, tmp_path, capsys):
    recipe = write(tmp_path / "cached.yaml", {
        # the heads on the last layer, nothing injected: the decoder's output does not depend on them
        "model": {"from_llama": {"path": str(baseline), "nc": {"layer": -1, "residual_injection": False},
                                 "library": {"value_size": 256}}},
        "trainable": ["nc_heads.*"],
        "data": {"tasks": ["add"], "n": 8, "lengths": [2], "loss_on": "answer"},
        "training": {"max_steps": 4, "per_device_train_batch_size": 4, "heads_learning_rate": 1e-2,
                     "cache_frozen_decoder": True, "save_steps": 2, "logging_steps": 1, "disable_tqdm": True},
        "probe": {"steps": 2, "per_task": 1},
    })
    assert main(["train", "--recipe", str(recipe), "--output-dir", str(tmp_path / "out")]) == 0
    assert "frozen decoder cache: 8 examples computed, 8 read back" in capsys.readouterr().out
    from modeling_nclama.modeling_nclama import NCLlamaForCausalLM

    for folder in (tmp_path / "out", tmp_path / "out" / "checkpoint-2"):  # saved with the real decoder's names
        NCLlamaForCausalLM.from_pretrained(folder)
    with pytest.raises(RecipeError, match="cache_frozen_decoder: must be true or false"):
        validate_recipe({"model": GOOD_MODEL, "training": {"cache_frozen_decoder": "yes"}})
