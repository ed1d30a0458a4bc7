"""Model folders (toolchain): ``nclama init`` makes a freshly initialized NCLlama from a preset (the same kind of
folder ``save_pretrained`` writes: config, weights, tokenizer, library files, runtime code); ``nclama export`` turns
a model folder into a complete Hub repo folder with its model card."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from .configuration_nclama import NCLlamaConfig
from .library import Library
from .modeling_nclama import NCLlamaForCausalLM, library_settings
from .tokenization import default_tokenizer, reader_tokens

PRESETS = Path(__file__).resolve().parents[1] / "configuration" / "models"
MODEL_CARD = Path(__file__).resolve().parents[1] / "hub_assets" / "templates" / "model_card.md"
BASELINE_CARD = MODEL_CARD.with_name("baseline_card.md")
EVAL_RESULTS = "eval_results.json"  # written by evaluation: {"rows": [{"task": ..., "length": ..., "exact_match": ...}]}
ADVERSARIAL_RESULTS = "adversarial_results.json"  # written by evaluation.evaluate_adversarial, beside EVAL_RESULTS


def preset(name: str) -> dict:
    """The settings of ``configuration/models/<name>.json``."""
    path = PRESETS / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in PRESETS.glob("*.json")) if PRESETS.is_dir() else []
        raise ValueError(f"unknown preset {name!r} (known: {', '.join(known) or 'none found in ' + str(PRESETS)})")
    return json.loads(path.read_text())


def init_model(name: str, output: Union[str, Path], *, tokenizer: Optional[str] = None, seed: int = 0) -> NCLlamaForCausalLM:
    """A freshly initialized NCLlama of preset ``name`` with the standard library, saved to ``output``.

    The tokenizer is the project's own (trained here, deterministic) unless ``tokenizer`` names another folder or
    Hub id; its vocabulary must match the preset's ``vocab_size``."""
    settings = preset(name)
    tok = AutoTokenizer.from_pretrained(tokenizer) if tokenizer else default_tokenizer(vocab_size=settings["vocab_size"])
    if len(tok) != settings["vocab_size"]:
        raise ValueError(f"preset {name} has vocab_size {settings['vocab_size']}, the tokenizer has {len(tok)} tokens")
    library = Library.standard(settings.pop("nc_value_size", 256))
    nc = {k: settings.pop(k) for k in list(settings) if k.startswith("nc_")}
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    config = NCLlamaConfig(**{**settings, **ids}, **library_settings(library, reader_tokens(tok), **nc))
    torch.manual_seed(seed)
    model = NCLlamaForCausalLM(config)
    model.attach_library(library)
    model.save_pretrained(output)
    tok.save_pretrained(output)
    return model


def export_model(model_dir: Union[str, Path], output: Union[str, Path], *, repo_id: Optional[str] = None) -> Path:
    """A complete Hub repo folder: config (with auto_map), weights, library files, tokenizer, generation config, the
    runtime ``.py`` files only, and a model card with Hub metadata and the evaluation table where results exist.
    A plain LLaMA folder (a baseline) exports as weights, config, tokenizer and its own card."""
    model_dir, output = Path(model_dir), Path(output)
    plain = json.loads((model_dir / "config.json").read_text()).get("model_type") == "llama"
    model = (LlamaForCausalLM if plain else NCLlamaForCausalLM).from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    tok.save_pretrained(output)
    for results in (EVAL_RESULTS, ADVERSARIAL_RESULTS):
        if (model_dir / results).is_file():
            (output / results).write_bytes((model_dir / results).read_bytes())
    card = baseline_card if plain else model_card
    (output / "README.md").write_text(card(model, output / EVAL_RESULTS, repo_id or output.name))
    return output


def evaluation_table(eval_results: Path) -> str:
    """The model card's evaluation section: exact match per task, split and length (``nclama eval`` results), and the
    adversarial set's summary when ``adversarial_results.json`` lies beside them."""
    if not eval_results.is_file():
        return "No evaluation results recorded for this checkpoint yet (`nclama eval` writes them)."
    rows = json.loads(eval_results.read_text())["rows"]
    lines = ["| task | templates | length | examples | exact match |", "| --- | --- | ---: | ---: | ---: |"]
    lines += [f"| {r['task']} | {r.get('split', 'train')} | {r['length']} | {r.get('n', '')} | {100 * r['exact_match']:.1f}% |" for r in rows]
    adversarial = eval_results.parent / ADVERSARIAL_RESULTS
    if adversarial.is_file():
        result = json.loads(adversarial.read_text())
        computable = sum(case["computable"] for case in result["cases"].values())
        lines += ["", f"Adversarial set (`configuration/adversarial.jsonl`, {result['n']} prompts): exact match "
                  f"{100 * result['computable_exact_match']:.1f}% on the {computable} the library can compute; "
                  f"**{result['wrong_with_gate_open']}** wrong answers given with the library's gate open.", "",
                  "| case | prompts | computable | exact match | wrong with gate open |", "| --- | ---: | ---: | ---: | ---: |"]
        for name, case in result["cases"].items():
            exact = "" if case["exact_match"] is None else f"{100 * case['exact_match']:.1f}%"
            lines.append(f"| {name} | {case['n']} | {case['computable']} | {exact} | {case['wrong_with_gate_open']} |")
    return "\n".join(lines)


def model_card(model: NCLlamaForCausalLM, eval_results: Path, repo_id: str) -> str:
    c = model.config
    base = getattr(c, "nc_base_model", None)
    return MODEL_CARD.read_text().format(
        base_model=f"base_model: {base}\n" if base else "",
        name=repo_id.split("/")[-1],
        repo_hint=repo_id,
        parameters=f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M",
        shape=f"{c.num_hidden_layers} / {c.hidden_size} / {c.num_attention_heads}",
        num_programs=len(c.nc_programs),
        value_size=c.nc_value_size,
        memory_size=c.nc_memory_size,
        mode=c.nc_mode,
        top_k=c.nc_top_k,
        programs=", ".join(f"`{p}`" for p in c.nc_programs),
        evaluation=evaluation_table(eval_results),
    )


def baseline_card(model: LlamaForCausalLM, eval_results: Path, repo_id: str) -> str:
    c = model.config
    return BASELINE_CARD.read_text().format(
        name=repo_id.split("/")[-1],
        repo_hint=repo_id,
        parameters=f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M",
        shape=f"{c.num_hidden_layers} / {c.hidden_size} / {c.num_attention_heads}",
        evaluation=evaluation_table(eval_results),
    )
