"""Training (toolchain): ``nclama train --recipe RECIPE.yaml --output-dir DIR`` with ``transformers.Trainer``.

A recipe (YAML, ``configuration/recipes/``) names the model to start from, which parameters train, the task data,
the ``TrainingArguments`` and an optional evaluation at the end. :func:`load_recipe` validates it and fills in the
defaults (errors name the bad key and value); :func:`train` runs it. Sections::

    model:              # exactly one of
      init: {preset: tiny, kind: llama | nclama, config: {...}, nc: {...}, library: {value_size: 1024}, seed: 0}
      from_llama: {path: DIR, nc: {...}, library: {value_size: 1024}}
      from_pretrained: DIR
    trainable: all | [name prefixes or globs]        # e.g. ["nc_heads.*"]: the decoder is frozen
    data: {tasks: all | [...], n: 20000, seed: 0, lengths: training_ranges | [ints] | {task: [low, high] | [ints]},
           max_value: null,                           # list items in 0..max_value (list tasks only)
           clrs_insertion_sort: 0,                    # extra CLRS-Text insertion-sort examples
           context: 0,                                # extra examples of text around questions (tasks.context_examples)
           chat: 0.0,                                 # the fraction of examples in the tokenizer's chat template
           loss_on: all | answer, max_length: null,
           format: answer | tool_call}                # tool_call: the tool-use baseline writes [[a+b]] (tool_use.py)
    training: {...any TrainingArguments field..., heads_learning_rate: null,   # the interpreter heads' own rate
               tables_learning_rate: null,   # the token-table heads (keyword calls, token sites, operand contexts);
                                             # default: heads_learning_rate
               gate_scale_learning_rate: null,   # the gate's scale (one number from 0); default: heads_learning_rate
               gate_learning_floor: 0.0, gate_target_weight: 0.0,   # NCLlama only: HeadsTraining
               cache_frozen_decoder: false}   # a frozen decoder's output computed once per example (FrozenDecoderCache)
    probe: {steps: 0, per_task: 2, seed: 1234,        # NCLlama only: gate and call accuracy in the log history
            heldout: 0,                               # per task, probes in held-out wordings (probe/heldout/...)
            chat: null}                               # probes in chat form too (probe/chat/...); default: data.chat > 0
    eval: {tasks: all | [...], lengths: null | [...], n: 20, split: train | heldout, seed: 0, batch_size: 16,
           max_value: null, chat: false}              # chat: the prompts in the tokenizer's chat template
    final_config: {nc_max_steps: 20000}               # nc_* settings set after training, before saving/evaluating

Examples are ``text`` plus the end-of-sequence token, tokenized as generation sees them (the prompt, then the rest
of the text; a prompt that starts with the tokenizer's BOS text, as a rendered chat template may, gets no second one);
with ``loss_on: answer`` the prompt's labels are -100. A model converted from a tokenizer with a chat template gets
its template's tokens (:func:`chat_tokens`, ``nc_chat_tokens``), so that its interpreter reads the user's question
from the assistant's turn.

A frozen decoder (``trainable: ["nc_heads.*"]``) with the heads on the last layer (``nc_layer: -1``, so no residual
injection) needs no backward through it: nothing the decoder computes requires a gradient, and a step costs the
decoder's forward, the interpreter and the heads' backward. Batches are padded per batch (:class:`Collator`).
Data parallel on CPU: ``torchrun --nproc_per_node 2 -m modeling_nclama.toolchain.cli train ...`` (gloo backend).
"""
from __future__ import annotations

import copy
import dataclasses
import fnmatch
import functools
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from transformers import TrainerCallback

from .tasks import ALL_TASKS, CLRS_TASK, SPLITS, TASKS, TRAINING_RANGES, validate
from .compiler import standard_library

__all__ = [
    "RECIPES", "TASK_PROGRAMS", "RecipeError", "load_recipe", "validate_recipe", "apply_overrides", "build_model",
    "apply_trainable", "build_train_dataset", "tokenize", "Collator", "training_arguments", "ProbeCallback",
    "build_probes", "probe_model", "train", "chat_tokens", "prompt_ids", "FrozenDecoderCache",
]

RECIPES = Path(__file__).resolve().parents[2] / "configuration" / "recipes"

#: The library programs that answer each task, the standard ones first (numbers and lists of numbers of any length
#: and sign), then those on values below V that small-V experiments call. Call accuracy compares the top call at the
#: answered site with the first of them the model's library has; a task none of whose programs it has is not scored.
TASK_PROGRAMS: dict[str, tuple[str, ...]] = {
    "add": ("long_add",),
    "sub": ("long_sub",),
    "mul": ("long_mul",),
    "less_than": ("long_cmp",),
    "gcd": ("long_gcd", "gcd"),
    "factorial": ("factorial_tape",),
    "fib": ("fib_tape",),
    "sort": ("sort_numbers", "insertion_sort"),
    "max": ("max_number", "max_list"),
    "min": ("min_number",),
    "sum": ("sum_numbers", "sum_list_tape"),
    CLRS_TASK: ("insertion_sort",),  # its keys are decimals: read with nc_decimal_places=3
}

KINDS = ("llama", "nclama")
LOSS_ON = ("all", "answer")
FORMATS = ("answer", "tool_call")  # tool_call: the tool-use baseline (tool_use.py)
LIBRARY_KEYS = ("value_size", "memory_size", "stack_depth", "max_steps")
# nc_* settings a recipe may not set: they follow from the library and the tokenizer
DERIVED_NC = ("nc_value_size", "nc_memory_size", "nc_stack_depth", "nc_library_fingerprint", "nc_reader_tokens",
              "nc_chat_tokens")


class RecipeError(ValueError):
    """A recipe that cannot run: the message names the key and the value at fault."""


# ----------------------------------------------------------------------------------------------------------------
# recipes
# ----------------------------------------------------------------------------------------------------------------

def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _say(message: str) -> None:
    if _is_main():
        print(message, flush=True)


def _check_keys(where: str, value: Any, allowed: Sequence[str], required: Sequence[str] = ()) -> dict:
    if not isinstance(value, Mapping):
        raise RecipeError(f"{where}: must be a mapping, got {value!r}")
    unknown = [k for k in value if k not in allowed]
    if unknown:
        raise RecipeError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(allowed)})")
    for key in required:
        if key not in value:
            raise RecipeError(f"{where}: missing key {key!r}")
    return dict(value)


def _int(where: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RecipeError(f"{where}: must be an int >= {minimum}, got {value!r}")
    return value


def _choice(where: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise RecipeError(f"{where}: must be one of {', '.join(choices)}, got {value!r}")
    return value


def _tasks(where: str, value: Any, known: Sequence[str] = ALL_TASKS) -> list[str]:
    if value == "all":
        return list(TASKS)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise RecipeError(f"{where}: must be 'all' or a non-empty list of tasks, got {value!r}")
    for task in value:
        if task not in known:
            raise RecipeError(f"{where}: unknown task {task!r} (known: {', '.join(known)})")
    return list(dict.fromkeys(value))


def _nc_settings(where: str, value: Any) -> dict:
    """``nc`` settings: ``top_k`` or ``nc_top_k`` alike; names checked against NCLlamaConfig."""
    from ..configuration_nclama import NCLlamaConfig

    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RecipeError(f"{where}: must be a mapping of nc_* settings, got {value!r}")
    known = [f.name for f in dataclasses.fields(NCLlamaConfig) if f.name.startswith("nc_")]
    out = {}
    for key, setting in value.items():
        name = key if str(key).startswith("nc_") else f"nc_{key}"
        if name in DERIVED_NC:
            hint = "library." + name[3:] if name[3:] in LIBRARY_KEYS else "the library and tokenizer"
            raise RecipeError(f"{where}.{key}: set by {hint}, not here")
        if name not in known:
            raise RecipeError(f"{where}: unknown setting {key!r} (known: {', '.join(k for k in known if k not in DERIVED_NC)})")
        out[name] = setting
    return out


def _library(where: str, value: Any) -> dict:
    if value is None:
        return {}
    value = _check_keys(where, value, LIBRARY_KEYS)
    for key in value:
        _int(f"{where}.{key}", value[key], 2)
    return value


def _model(where: str, value: Any) -> dict:
    sources = ("init", "from_llama", "from_pretrained")
    value = _check_keys(where, value, sources)
    if len(value) != 1:
        raise RecipeError(f"{where}: needs exactly one of {', '.join(sources)}, got {sorted(value) or 'none'}")
    (source, spec), = value.items()
    here = f"{where}.{source}"
    if source == "from_pretrained":
        if not isinstance(spec, str) or not spec:
            raise RecipeError(f"{here}: must be a model folder or Hub id, got {spec!r}")
        return {"from_pretrained": spec}
    if source == "from_llama":
        spec = _check_keys(here, spec, ("path", "nc", "library"), required=("path",))
        if not isinstance(spec["path"], str) or not spec["path"]:
            raise RecipeError(f"{here}.path: must be a LLaMA model folder or Hub id, got {spec['path']!r}")
        return {"from_llama": {"path": spec["path"], "nc": _nc_settings(f"{here}.nc", spec.get("nc")),
                               "library": _library(f"{here}.library", spec.get("library"))}}
    spec = _check_keys(here, spec, ("preset", "kind", "config", "nc", "library", "seed"), required=("preset",))
    from .checkpoints import preset

    try:
        preset(spec["preset"])
    except ValueError as error:
        raise RecipeError(f"{here}.preset: {error}") from None
    kind = _choice(f"{here}.kind", spec.get("kind", "nclama"), KINDS)
    config = spec.get("config") or {}
    if not isinstance(config, Mapping) or any(str(k).startswith("nc_") for k in config):
        raise RecipeError(f"{here}.config: must be a mapping of LLaMA settings (nc_* settings go in 'nc'), got {config!r}")
    if kind == "llama" and (spec.get("nc") or spec.get("library")):
        raise RecipeError(f"{here}: kind llama has no library: remove 'nc' and 'library'")
    return {"init": {"preset": spec["preset"], "kind": kind, "config": dict(config),
                     "nc": _nc_settings(f"{here}.nc", spec.get("nc")),
                     "library": _library(f"{here}.library", spec.get("library")),
                     "seed": _int(f"{here}.seed", spec.get("seed", 0))}}


def _lengths(where: str, value: Any, tasks: Sequence[str]) -> Union[str, list, dict]:
    """``training_ranges`` (tasks.TRAINING_RANGES), a list of lengths for every task, or per task ``[low, high]``
    (inclusive) or a list of lengths (a task not named keeps its training range). Normalized to the list, or to a
    mapping of every task, so the recipe copy beside the model records the ranges used."""
    ranges = {task: list(TRAINING_RANGES[task]["length"]) for task in tasks}
    if value is None or value == "training_ranges":
        return ranges
    if isinstance(value, list):
        try:
            validate(tasks, value)
        except ValueError as error:
            raise RecipeError(f"{where}: {error}") from None
        return list(value)
    if not isinstance(value, Mapping):
        raise RecipeError(f"{where}: must be 'training_ranges', a list of lengths or a mapping task -> [low, high], got {value!r}")
    out = {}
    for task, spec in value.items():
        if task not in tasks:
            raise RecipeError(f"{where}.{task}: not a task of data.tasks ({', '.join(tasks)})")
        if not isinstance(spec, (list, tuple)) or not spec or not all(isinstance(v, int) and not isinstance(v, bool) for v in spec):
            raise RecipeError(f"{where}.{task}: must be [low, high] (inclusive), got {spec!r}")
        if len(spec) == 2 and spec[0] > spec[1]:
            raise RecipeError(f"{where}.{task}: low {spec[0]} is above high {spec[1]}")
        try:
            validate([task], _length_list(spec))
        except ValueError as error:
            raise RecipeError(f"{where}.{task}: {error}") from None
        out[task] = list(spec)
    return {**ranges, **out}  # tasks not named keep their training range


def _length_list(spec: Sequence[int]) -> list[int]:
    return list(range(spec[0], spec[1] + 1)) if len(spec) == 2 else list(spec)


def _data(where: str, value: Any) -> dict:
    value = _check_keys(where, value or {}, ("tasks", "n", "seed", "lengths", "max_value", "clrs_insertion_sort", "context",
                                             "chat", "loss_on", "max_length", "format"))
    tasks = _tasks(f"{where}.tasks", value.get("tasks", "all"))
    max_value = _max_value(where, value.get("max_value"), tasks)
    clrs = _int(f"{where}.clrs_insertion_sort", value.get("clrs_insertion_sort", 0))
    max_length = value.get("max_length")
    if max_length is not None:
        _int(f"{where}.max_length", max_length, 2)
    return {
        "tasks": tasks,
        "n": _int(f"{where}.n", value.get("n", 20_000), 1),
        "seed": _int(f"{where}.seed", value.get("seed", 0)),
        "lengths": _lengths(f"{where}.lengths", value.get("lengths"), tasks),
        "max_value": max_value,
        "clrs_insertion_sort": clrs,
        "context": _int(f"{where}.context", value.get("context", 0)),
        "chat": _fraction(f"{where}.chat", value.get("chat", 0.0)),
        "loss_on": _choice(f"{where}.loss_on", value.get("loss_on", "all"), LOSS_ON),
        "max_length": max_length,
        "format": _choice(f"{where}.format", value.get("format", "answer"), FORMATS),
    }


def _fraction(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise RecipeError(f"{where}: must be a fraction in [0, 1], got {value!r}")
    return float(value)


def _flag(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise RecipeError(f"{where}: must be true or false, got {value!r}")
    return value


def _max_value(where: str, value: Any, tasks: Sequence[str]) -> Optional[int]:
    try:
        validate(tasks, max_value=value)
    except ValueError as error:
        raise RecipeError(f"{where}.max_value: {error}") from None
    return value


_HEADS_RATES = ("heads_learning_rate", "tables_learning_rate", "gate_scale_learning_rate")
_HEADS_TRAINING = ("gate_learning_floor", "gate_target_weight")  # modeling_nclama.HeadsTraining
_OURS = (*_HEADS_RATES, *_HEADS_TRAINING, "cache_frozen_decoder")  # training keys that are not TrainingArguments fields


def _training(where: str, value: Any) -> dict:
    from transformers import TrainingArguments

    value = value or {}
    if not isinstance(value, Mapping):
        raise RecipeError(f"{where}: must be a mapping of TrainingArguments fields, got {value!r}")
    known = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    for key in value:
        if key == "cache_frozen_decoder":
            _flag(f"{where}.{key}", value[key])
            continue
        if key in _HEADS_TRAINING:
            from ..heads import HeadsTraining

            try:
                HeadsTraining(**{key: value[key]})
            except ValueError as error:
                raise RecipeError(f"{where}.{error}") from None
            continue
        if key in _HEADS_RATES:  # ours: the interpreter heads' own rates (they start from scratch)
            if isinstance(value[key], bool) or not isinstance(value[key], (int, float)) or value[key] <= 0:
                raise RecipeError(f"{where}.{key}: must be a positive number, got {value[key]!r}")
            continue
        if key == "output_dir":
            raise RecipeError(f"{where}.output_dir: the output folder is given on the command line (--output-dir)")
        if key == "resume_from_checkpoint":
            raise RecipeError(f"{where}.resume_from_checkpoint: resume with --resume")
        if key not in known:
            close = [k for k in sorted(known) if key.split("_")[0] in k][:5]
            raise RecipeError(f"{where}: {key!r} is not a TrainingArguments field" + (f" (similar: {', '.join(close)})" if close else ""))
    for key in _HEADS_RATES[1:]:
        if key in value and "heads_learning_rate" not in value:
            raise RecipeError(f"{where}.{key}: needs heads_learning_rate (the other heads' rate)")
    # YAML 1.1 reads `save_strategy: no` as false
    return {k: "no" if k.endswith("_strategy") and v is False else v for k, v in value.items()}


def _final_config(where: str, value: Any) -> dict:
    """``nc_*`` settings the model gets after training, before it is saved and evaluated (a larger machine step
    budget for the evaluation lengths than training needs, where every untrained call may run to the budget)."""
    value = value or {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and k.startswith("nc_") for k in value):
        raise RecipeError(f"{where}: must be a mapping of nc_* settings, got {value!r}")
    return dict(value)


def _probe(where: str, value: Any) -> dict:
    value = _check_keys(where, value or {}, ("steps", "per_task", "seed", "heldout", "chat"))
    chat = value.get("chat")
    return {"steps": _int(f"{where}.steps", value.get("steps", 0)),
            "per_task": _int(f"{where}.per_task", value.get("per_task", 2), 1),
            "seed": _int(f"{where}.seed", value.get("seed", 1234)),
            "heldout": _int(f"{where}.heldout", value.get("heldout", 0)),
            "chat": None if chat is None else _flag(f"{where}.chat", chat)}


def _eval(where: str, value: Any) -> Optional[dict]:
    if value is None:
        return None
    value = _check_keys(where, value, ("tasks", "lengths", "n", "split", "seed", "batch_size", "max_new_tokens", "max_value",
                                       "chat"))
    tasks = _tasks(f"{where}.tasks", value.get("tasks", "all"))
    max_value = _max_value(where, value.get("max_value"), tasks)
    split = _choice(f"{where}.split", value.get("split", "train"), SPLITS)
    lengths = value.get("lengths")
    try:
        validate(tasks, lengths, split)
    except ValueError as error:
        raise RecipeError(f"{where}: {error}") from None
    max_new = value.get("max_new_tokens")
    return {"tasks": tasks, "lengths": list(lengths) if lengths else None, "n": _int(f"{where}.n", value.get("n", 20), 1),
            "split": split, "seed": _int(f"{where}.seed", value.get("seed", 0)),
            "batch_size": _int(f"{where}.batch_size", value.get("batch_size", 16), 1),
            "max_new_tokens": None if max_new is None else _int(f"{where}.max_new_tokens", max_new, 1),
            "max_value": max_value, "chat": _flag(f"{where}.chat", value.get("chat", False))}


def validate_recipe(raw: Any, source: str = "recipe") -> dict:
    """The recipe with every default filled in, or :class:`RecipeError` naming ``source`` and the bad key/value."""
    try:
        raw = _check_keys("recipe", raw, ("model", "trainable", "data", "training", "probe", "eval", "final_config"), required=("model",))
        model = _model("model", raw["model"])
        trainable = raw.get("trainable", "all")
        if trainable != "all" and (isinstance(trainable, str) or not isinstance(trainable, list) or not trainable
                                   or not all(isinstance(p, str) and p for p in trainable)):
            raise RecipeError(f"trainable: must be 'all' or a non-empty list of parameter name prefixes or globs, got {trainable!r}")
        recipe = {"model": model, "trainable": trainable, "data": _data("data", raw.get("data")),
                  "training": _training("training", raw.get("training")), "probe": _probe("probe", raw.get("probe")),
                  "eval": _eval("eval", raw.get("eval")), "final_config": _final_config("final_config", raw.get("final_config"))}
        if recipe["probe"]["steps"] and _kind(model) == "llama":
            raise RecipeError("probe.steps: probes read an NCLlama's interpreter; this recipe trains a plain LLaMA")
        return recipe
    except RecipeError as error:
        raise RecipeError(f"{source}: {error}") from None


def _kind(model: dict) -> Optional[str]:
    """llama or nclama, or None when only the folder can tell (from_pretrained)."""
    if "init" in model:
        return model["init"]["kind"]
    if "from_llama" in model:
        return "nclama"
    return None


def apply_overrides(raw: dict, overrides: Mapping[str, Any]) -> dict:
    """``{"training.max_steps": 3, "data.n": 64}``: dotted keys set in (a copy of) the raw recipe."""
    raw = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        keys = dotted.split(".")
        node = raw
        for key in keys[:-1]:
            if node.get(key) is None:
                node[key] = {}
            node = node[key]
            if not isinstance(node, dict):
                raise RecipeError(f"override {dotted}: {key!r} is not a mapping in the recipe")
        node[keys[-1]] = value
    return raw


def load_recipe(path: Union[str, Path], overrides: Optional[Mapping[str, Any]] = None) -> dict:
    """Read, override and validate a recipe (a path, or a name in ``configuration/recipes``)."""
    import yaml

    path = Path(path)
    if not path.is_file() and (RECIPES / f"{path}.yaml").is_file():
        path = RECIPES / f"{path}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no recipe {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML: {error}") from None
    return validate_recipe(apply_overrides(raw or {}, overrides or {}), str(path))


# ----------------------------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _default_tokenizer(vocab_size: int):
    from .tokenization import default_tokenizer

    return default_tokenizer(vocab_size=vocab_size)


def _standard_library(settings: dict, default_value_size: int = 256):
    settings = dict(settings)
    return standard_library(settings.pop("value_size", default_value_size), **settings)


def _result_words(nc: dict, tokenizer=None) -> list[str]:
    """The words results are written as (nc_result_words): the reader's table must hold their tokens. For a
    tokenizer with a chat template and ``nc_answer_lead``, also each word's form without its leading space where
    that is one token (" no" and "no": the answer in the assistant's turn starts on a new line)."""
    words = {word for words in (nc.get("nc_result_words") or {}).values() for word in words}
    if tokenizer is not None and nc.get("nc_answer_lead") and getattr(tokenizer, "chat_template", None):
        bare = sorted({word.lstrip(" ") for word in words} - words - {""})
        words |= set(_one_token_words(tokenizer, bare))
    return sorted(words)


def _one_token_words(tokenizer, words: Sequence[str]) -> list[str]:
    """The words of ``words`` that ``tokenizer`` writes as one token of that text (where the text continues other
    text), in order: the unspaced form of a result word is written only where it is one."""
    from .tokenization import continuation_ids, token_texts

    texts = token_texts(tokenizer)
    return [w for w in words if len(ids := continuation_ids(tokenizer, w)) == 1 and texts.get(ids[0]) == w]


def chat_tokens(tokenizer) -> dict[str, str]:
    """``nc_chat_tokens`` for ``tokenizer``: the tokens its chat template writes around the messages (a conversation
    of empty system, user and assistant messages, then the start of the assistant's turn, holds nothing else), each
    with its role: ``"marker"`` for special tokens (``<|im_start|>``, ``<|im_end|>``), ``"break"`` for whitespace
    (the newline that ends a header), ``"header"`` for the rest (role names). Empty without a chat template."""
    if not getattr(tokenizer, "chat_template", None):
        return {}
    messages = [{"role": role, "content": ""} for role in ("system", "user", "assistant")]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, Mapping) else ids
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    roles = {}
    for token in ids:
        text = tokenizer.decode([token])
        roles[str(token)] = "marker" if token in special else "break" if not text.strip() else "header"
    return dict(sorted(roles.items(), key=lambda item: int(item[0])))


def build_model(spec: dict):
    """(model, tokenizer, kind) for a validated ``model`` section; kind is ``llama`` or ``nclama``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from ..calls import library_settings
    from ..modeling_nclama import NCLlamaForCausalLM
    from .tokenization import reader_tokens

    if "from_pretrained" in spec:
        where = spec["from_pretrained"]
        tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=True)  # an NCLlama folder has an auto_map
        if AutoConfig.from_pretrained(where, trust_remote_code=True).model_type == "nclama":
            return NCLlamaForCausalLM.from_pretrained(where), tokenizer, "nclama"
        return AutoModelForCausalLM.from_pretrained(where), tokenizer, "llama"
    if "from_llama" in spec:
        spec = spec["from_llama"]
        tokenizer = AutoTokenizer.from_pretrained(spec["path"])
        library = _standard_library(spec["library"])
        model = NCLlamaForCausalLM.from_llama(spec["path"], library, reader_tokens=reader_tokens(tokenizer, _result_words(spec["nc"], tokenizer)),
                                              nc_chat_tokens=chat_tokens(tokenizer), **spec["nc"])
        return model, tokenizer, "nclama"
    from .checkpoints import preset

    spec = spec["init"]
    settings = {**preset(spec["preset"]), **spec["config"]}
    preset_nc = {k: settings.pop(k) for k in list(settings) if k.startswith("nc_")}
    tokenizer = _default_tokenizer(settings["vocab_size"])
    if len(tokenizer) != settings["vocab_size"]:
        raise RecipeError(f"preset {spec['preset']}: vocab_size {settings['vocab_size']}, the tokenizer has {len(tokenizer)} tokens")
    settings.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(spec["seed"])
    if spec["kind"] == "llama":
        return LlamaForCausalLM(LlamaConfig(**settings)), tokenizer, "llama"
    from ..configuration_nclama import NCLlamaConfig

    library = _standard_library(spec["library"], preset_nc.pop("nc_value_size", 256))
    nc = {k: v for k, v in {**preset_nc, **spec["nc"]}.items() if k not in DERIVED_NC}
    config = NCLlamaConfig(**settings, **library_settings(library, reader_tokens(tokenizer, _result_words(nc, tokenizer)),
                                                          nc_chat_tokens=chat_tokens(tokenizer), **nc))
    model = NCLlamaForCausalLM(config)
    model.attach_library(library)
    return model, tokenizer, "nclama"


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.startswith(pattern.rstrip(".") + ".") or fnmatch.fnmatchcase(name, pattern)


def apply_trainable(model: torch.nn.Module, trainable: Union[str, Sequence[str]]) -> tuple[int, int]:
    """``all``: the parameters the model marks trainable train; a list of name prefixes or globs: those and no
    other (a tied weight trains if any of its names matches). Returns (trainable, total) parameter counts."""
    if trainable != "all":
        names: dict[int, list[str]] = {}
        params = {}
        for name, param in model.named_parameters(remove_duplicate=False):
            names.setdefault(id(param), []).append(name)
            params[id(param)] = param
        for pattern in trainable:
            if not any(_matches(n, pattern) for ns in names.values() for n in ns):
                raise RecipeError(f"trainable: {pattern!r} matches no parameter (names look like "
                                  f"{', '.join(list(n[0] for n in names.values())[:3])}, ...)")
        for key, param in params.items():
            param.requires_grad_(any(_matches(n, p) for n in names[key] for p in trainable))
    total = sum(p.numel() for p in model.parameters())
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return count, total


# ----------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------

def _examples(data: dict):
    """The training examples: each task from its own seeded stream, interleaved round robin (the same examples as
    ``make_dataset(tasks, n)`` when lengths are the training ranges), plus the extra CLRS insertion-sort examples and
    the examples of text around questions (statements to leave alone, questions after other text), appended (the
    Trainer samples every example in random order)."""
    from datasets import concatenate_datasets

    from .tasks import TASKS, clrs_insertion_sort, context_examples, make_dataset

    tasks, n, lengths = data["tasks"], data["n"], data["lengths"]
    parts = []
    for index, task in enumerate(tasks[:n]):  # a task past the n-th would get no example
        task_lengths = lengths if isinstance(lengths, list) else _length_list(lengths[task])
        parts.append(make_dataset([task], len(range(index, n, len(tasks))), seed=data["seed"], lengths=task_lengths,
                                  max_value=data["max_value"]))
    offsets = [sum(len(p) for p in parts[:k]) for k in range(len(parts))]
    indices = [offsets[i % len(tasks)] + i // len(tasks) for i in range(n)]  # row i: task i mod T, its (i div T)-th
    dataset = concatenate_datasets(parts).select(indices)
    if data["clrs_insertion_sort"]:
        dataset = concatenate_datasets([dataset, clrs_insertion_sort(data["clrs_insertion_sort"], seed=data["seed"])])
    if data["context"]:
        questions = [t for t in data["tasks"] if t in TASKS] or list(TASKS)
        dataset = concatenate_datasets([dataset, context_examples(data["context"], seed=data["seed"], tasks=questions)])
    if data["format"] == "tool_call":  # the tool-use baseline writes a call instead of the answer
        from .tool_use import tool_text

        dataset = dataset.map(lambda row: {"text": tool_text(row)})
    return dataset


def prompt_ids(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of prompts as generation gets them: with the tokenizer's special tokens, except that a prompt that
    already starts with the BOS token's text (a rendered chat template) gets no second BOS."""
    bos = getattr(tokenizer, "bos_token", None)
    rendered = [bool(bos) and p.startswith(bos) for p in prompts]
    out: list[Optional[list[int]]] = [None] * len(prompts)
    for flag in (False, True):
        index = [i for i, r in enumerate(rendered) if r == flag]
        if index:
            for i, ids in zip(index, tokenizer([prompts[i] for i in index], add_special_tokens=not flag)["input_ids"]):
                out[i] = ids
    return out


def _encode(tokenizer, prompt: str, text: str) -> tuple[list[int], int]:
    """Token ids of ``text`` + EOS as generation sees them (the prompt alone, then the rest), and the prompt's length."""
    prompt_ids_ = prompt_ids(tokenizer, [prompt])[0]
    rest = tokenizer(text[len(prompt):], add_special_tokens=False)["input_ids"]
    return prompt_ids_ + rest + [tokenizer.eos_token_id], len(prompt_ids_)


def tokenize(dataset, tokenizer, *, loss_on: str = "all", max_length: Optional[int] = None):
    """A task dataset (columns prompt/answer/text/...) -> ``input_ids`` and ``labels`` (-100 on the prompt when
    ``loss_on="answer"``); examples longer than ``max_length`` tokens are dropped."""
    _choice("loss_on", loss_on, LOSS_ON)
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no end-of-sequence token")

    from datasets import Dataset

    rows = {"input_ids": [], "labels": []}
    prompts, texts = list(dataset["prompt"]), list(dataset["text"])
    heads = prompt_ids(tokenizer, prompts) if prompts else []
    rests = tokenizer([t[len(p):] for p, t in zip(prompts, texts)], add_special_tokens=False)["input_ids"] if prompts else []
    for head, rest in zip(heads, rests):  # as in _encode: the prompt alone, then the rest, then EOS
        ids, prompt_length = head + rest + [tokenizer.eos_token_id], len(head)
        if max_length is not None and len(ids) > max_length:
            continue
        rows["input_ids"].append(ids)
        rows["labels"].append(ids if loss_on == "all" else [-100] * prompt_length + ids[prompt_length:])
    return Dataset.from_dict(rows)


class Collator:
    """Pads a batch of ``input_ids``/``labels`` to its longest example (right padding: pad id, labels -100) and adds
    the attention mask."""

    def __init__(self, tokenizer):
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else tokenizer.eos_token_id

    def __call__(self, rows: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(row["input_ids"]) for row in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            ids[i, :n] = torch.as_tensor(row["input_ids"])
            labels[i, :n] = torch.as_tensor(row.get("labels", row["input_ids"]))
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def build_train_dataset(data: dict, tokenizer, max_length: Optional[int] = None):
    dataset = _examples(data)
    if data.get("chat"):  # questions, statements and context examples alike
        from .tasks import chat_form

        dataset = chat_form(dataset, tokenizer, data["chat"], seed=data["seed"])
    before = len(dataset)
    dataset = tokenize(dataset, tokenizer, loss_on=data["loss_on"], max_length=max_length)
    if len(dataset) < before:
        _say(f"dropped {before - len(dataset)} of {before} examples longer than {max_length} tokens")
    if not len(dataset):
        raise RecipeError(f"data: every example is longer than {max_length} tokens")
    return dataset


# ----------------------------------------------------------------------------------------------------------------
# training arguments
# ----------------------------------------------------------------------------------------------------------------

def _training_defaults(kind: str) -> dict:
    cuda = torch.cuda.is_available()
    return {
        "use_cpu": not cuda,
        "report_to": "none",
        "dataloader_num_workers": 0,
        "per_device_train_batch_size": 8,
        "learning_rate": 1e-3,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "logging_steps": 10,
        "logging_first_step": True,
        "save_strategy": "steps",
        "save_steps": 500,
        "save_total_limit": 2,
        "seed": 0,
        "remove_unused_columns": False,
        "disable_tqdm": False,
        # gloo on CPU, set only under a launcher (accelerate would otherwise look for a process group)
        "ddp_backend": "gloo" if not cuda and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        # an NCLlama step may leave heads unused (a batch with no operands, a program never in the top k)
        "ddp_find_unused_parameters": kind == "nclama",
    }


def training_arguments(training: dict, output_dir: Union[str, Path], kind: str):
    """``TrainingArguments`` from a recipe's ``training`` section over the CPU-friendly defaults."""
    from transformers import TrainingArguments

    settings = {**_training_defaults(kind), **training}
    try:
        return TrainingArguments(output_dir=str(output_dir), **settings)
    except (TypeError, ValueError) as error:
        raise RecipeError(f"training: {error}") from None


# ----------------------------------------------------------------------------------------------------------------
# probes: what learns what
# ----------------------------------------------------------------------------------------------------------------

def build_probes(tokenizer, tasks: Sequence[str], per_task: int = 2, seed: int = 1234,
                 max_value: Optional[int] = None, *, heldout: int = 0, chat: bool = False) -> list[dict]:
    """A small fixed probe set: ``per_task`` training examples of each task (list items up to ``max_value``), cut
    after the answer's first token (the separator's tokens stay in the prefix): ``{task, group, ids,
    prefix_length}``, ``group`` the task. ``heldout``: that many examples of each task in held-out wordings too
    (group ``heldout``); ``chat``: every probe in the tokenizer's chat template too (groups ``chat`` and
    ``chat_heldout``)."""
    from .tasks import chat_example, make_dataset

    rows = []
    for task in tasks:
        values = max_value if task != CLRS_TASK else None
        rows += [(task, row) for row in make_dataset([task], per_task, seed=seed, max_value=values).to_list()]
        if heldout and task != CLRS_TASK:  # CLRS-Text has one format only
            rows += [("heldout", row) for row in make_dataset([task], heldout, seed=seed, split="heldout",
                                                              max_value=values).to_list()]
    if chat:
        rows += [("chat" if group != "heldout" else "chat_heldout", chat_example(row, tokenizer)) for group, row in rows]
    probes = []
    for group, row in rows:
        ids, prompt_length = _encode(tokenizer, row["prompt"], row["text"])
        first = prompt_length
        while first < len(ids) - 1 and not tokenizer.decode([ids[first]]).strip():
            first += 1  # separator tokens (a space) belong to the prefix
        probes.append({"task": row["task"], "group": group, "ids": ids[: first + 1], "prefix_length": first})
    return probes


@torch.no_grad()
def probe_model(model, probes: Sequence[dict]) -> dict[str, float]:
    """For an NCLlama: per group of probes (its task, or ``heldout``, ``chat``, ``chat_heldout``: see
    :func:`build_probes`) and overall, the mean gate at the answer's first position and the call accuracy (the top
    call at the site answered is the first of :data:`TASK_PROGRAMS`'s programs for the task that the model has;
    tasks whose program the model lacks are not scored). Keys ``probe/<group>/gate``, ``probe/<group>/call_accuracy``,
    ``probe/gate``, ``probe/call_accuracy``."""
    was_training = model.training
    model.eval()
    gates: dict[str, list[float]] = {}
    hits: dict[str, list[float]] = {}
    programs = set(model.config.nc_programs)
    try:
        for probe in probes:
            sequence = torch.tensor(probe["ids"], dtype=torch.long, device=model.device)
            row = model.explain(sequence, probe["prefix_length"], max_trace_rows=1)[-1]
            task, group = probe["task"], probe.get("group", probe["task"])
            gates.setdefault(group, []).append(float(row["gate"]))
            expected = next((p for p in TASK_PROGRAMS.get(task, ()) if p in programs), None)
            if expected is not None:
                top = max(row["calls"], key=lambda c: c["probability"])["program"] if row["calls"] else None
                hits.setdefault(group, []).append(float(top == expected))
    finally:
        model.train(was_training)
    metrics = {}
    for task, values in gates.items():
        metrics[f"probe/{task}/gate"] = sum(values) / len(values)
        if task in hits:
            metrics[f"probe/{task}/call_accuracy"] = sum(hits[task]) / len(hits[task])
    every_gate = [g for values in gates.values() for g in values]
    every_hit = [h for values in hits.values() for h in values]
    if every_gate:
        metrics["probe/gate"] = sum(every_gate) / len(every_gate)
    if every_hit:
        metrics["probe/call_accuracy"] = sum(every_hit) / len(every_hit)
    return metrics


class ProbeCallback(TrainerCallback):
    """Every ``steps`` optimizer steps (and before the first and after the last), on the main process: the probes of
    :func:`probe_model` written into the trainer's log history (``trainer_state.json``, ``train_log.json``), so a
    plot can show when the gate opens and which tasks' calls are learned."""

    def __init__(self, probes: Sequence[dict], steps: int):
        if steps < 1:
            raise ValueError(f"steps must be positive, got {steps}")
        self.probes, self.steps = list(probes), steps
        self._last: Optional[int] = None

    def _probe(self, state, model) -> None:
        if not state.is_world_process_zero or model is None or self._last == state.global_step:
            return
        self._last = state.global_step
        metrics = probe_model(model, self.probes)
        state.log_history.append({**metrics, "step": state.global_step})
        from tqdm.auto import tqdm

        accuracy = metrics.get("probe/call_accuracy", math.nan)
        groups = "".join(f"; {group}: gate {metrics[f'probe/{group}/gate']:.3f}, call accuracy "
                         f"{metrics.get(f'probe/{group}/call_accuracy', math.nan):.2f}"
                         for group in ("heldout", "chat", "chat_heldout") if f"probe/{group}/gate" in metrics)
        tqdm.write(f"probe at step {state.global_step}: gate {metrics.get('probe/gate', math.nan):.3f}, "
                   f"call accuracy {accuracy:.2f}{groups}")

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:
            self._probe(state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.steps == 0:
            self._probe(state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._probe(state, model)


# ----------------------------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------------------------

class _CachedDecoder(torch.nn.Module):
    """Stands in for a frozen decoder in training steps: the final hidden states of each example (keyed by its
    tokens), and those of layer ``nc_call_layer`` where the call reader reads another layer, computed by the real
    decoder (no graph) the first time the example is drawn, read back afterwards."""

    def __init__(self, decoder: torch.nn.Module):
        super().__init__()
        self.decoder = decoder
        config = decoder.config
        call_layer = config.nc_call_layer
        layers = config.num_hidden_layers
        # hidden_states[i + 1] is layer i's output; the last layer's is read after the final norm (last_hidden_state)
        self.call_layer = None if call_layer is None or call_layer % layers == layers - 1 else call_layer % layers + 1
        self.kept: dict[tuple, tuple] = {}
        self.computed = self.reused = 0

    def forward(self, input_ids=None, attention_mask=None, at_layer=None, **kwargs):
        from transformers.modeling_outputs import BaseModelOutputWithPast

        if input_ids is None:
            raise ValueError("the frozen decoder cache reads token ids")
        lengths = (attention_mask.sum(1) if attention_mask is not None else
                   torch.full((input_ids.shape[0],), input_ids.shape[1])).tolist()
        if attention_mask is not None and not all(attention_mask[b, :n].all() for b, n in enumerate(lengths)):
            raise ValueError("the frozen decoder cache needs right-padded batches (training's Collator pads so)")
        keys = [tuple(input_ids[b, :n].tolist()) for b, n in enumerate(lengths)]
        missing = [b for b, key in enumerate(keys) if key not in self.kept]
        if missing:
            width = max(lengths[b] for b in missing)
            with torch.no_grad():
                out = self.decoder(input_ids=input_ids[missing, :width], use_cache=False,
                                   output_hidden_states=self.call_layer is not None,
                                   attention_mask=None if attention_mask is None else attention_mask[missing, :width])
            for row, b in enumerate(missing):
                self.kept[keys[b]] = tuple(h[row, : lengths[b]].detach().clone() for h in (
                    out.last_hidden_state, *([out.hidden_states[self.call_layer]] if self.call_layer else [])))
        self.computed += len(missing)
        self.reused += len(keys) - len(missing)
        states = [input_ids.new_zeros((*input_ids.shape, self.decoder.config.hidden_size), dtype=self.decoder.dtype)
                  for _ in self.kept[keys[0]]]
        for b, key in enumerate(keys):
            for state, kept in zip(states, self.kept[key]):
                state[b, : lengths[b]] = kept
        out = states[0]
        if at_layer is not None:  # the interpreter reads the last layer (checked by FrozenDecoderCache)
            out = at_layer(out, states[1] if len(states) > 1 else None)
        return BaseModelOutputWithPast(last_hidden_state=out)


class FrozenDecoderCache(TrainerCallback):
    """``training.cache_frozen_decoder``: an NCLlama whose decoder is frozen and read at its last layer (``nc_layer`` -1,
    so no residual injection) gets the same final hidden states (and call-layer states) for an example every time the
    example is drawn. The first time, the decoder runs (without a graph) and its output is kept (576 floats a token and
    layer for SmolLM2: about 160 KB an example and layer); every later epoch reads it back, so a step costs the interpreter, the LM head and
    the heads' backward only. The stand-in replaces the decoder during the optimizer steps only: probes, checkpoints,
    the saved model and generation see the real one."""

    def __init__(self, model: torch.nn.Module, world_size: int = 1):
        config = getattr(model, "config", None)
        if not hasattr(model, "nc_heads"):
            raise RecipeError("training.cache_frozen_decoder: for an NCLlama (its heads train on a frozen decoder)")
        layers = config.num_hidden_layers
        if config.nc_layer % layers != layers - 1 or config.nc_residual_injection:
            raise RecipeError("training.cache_frozen_decoder: the heads must read the last layer (nc_layer: -1) "
                              "without residual injection, else the decoder's output depends on the heads")
        moving = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("nc_heads.")]
        if moving:
            raise RecipeError(f"training.cache_frozen_decoder: the decoder must be frozen (trainable: "
                              f"['nc_heads.*']), but {moving[0]} trains")
        if world_size > 1:
            raise RecipeError("training.cache_frozen_decoder: one process only (each would keep its own copy)")
        self.model, self.decoder = model, model.model
        self.stand_in = _CachedDecoder(model.model)

    def on_step_begin(self, args, state, control, **kwargs):
        self.model.model = self.stand_in

    def on_step_end(self, args, state, control, **kwargs):
        self.model.model = self.decoder

    def on_train_end(self, args, state, control, **kwargs):
        self.model.model = self.decoder
        _say(f"frozen decoder cache: {self.stand_in.computed} examples computed, {self.stand_in.reused} read back")


def heads_optimizer(model: torch.nn.Module, args, heads_learning_rate: float,
                    tables_learning_rate: Optional[float] = None,
                    gate_scale_learning_rate: Optional[float] = None) -> torch.optim.Optimizer:
    """AdamW (the Trainer's settings) with the interpreter heads at their own learning rate: they start from
    scratch (the gate's scale at 0) while the decoder is pretrained, and at the decoder's rate a closed gate opens
    by only about one learning rate per step. The token-table heads (the ``nn.Embedding`` tables of the keyword
    call, token site and context operand readers) may get another: Adam moves a table's score by about the rate per
    step, a linear head on a normalized hidden state of width d moves its logit by up to about d times that. So may
    the gate's scale (``nc_heads.gate_scale``): one number from 0 that Adam moves by about its rate per step, so
    that at a rate fit for linear heads on a wide hidden state (SmolLM2's 576) it takes a thousand steps to open."""
    heads = getattr(model, "nc_heads", torch.nn.Module())
    tables = {id(p) for m in heads.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    scale = {id(heads.gate_scale)} if isinstance(getattr(heads, "gate_scale", None), torch.nn.Parameter) else set()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if n.startswith("nc_heads.") and id(p) not in tables | scale],
               "lr": heads_learning_rate},
              {"params": [p for n, p in named if not n.startswith("nc_heads.")], "lr": args.learning_rate},
              {"params": [p for n, p in named if id(p) in tables], "lr": tables_learning_rate or heads_learning_rate},
              {"params": [p for n, p in named if id(p) in scale], "lr": gate_scale_learning_rate or heads_learning_rate}]
    return torch.optim.AdamW([g for g in groups if g["params"]], betas=(args.adam_beta1, args.adam_beta2),
                             eps=args.adam_epsilon, weight_decay=args.weight_decay)


def _leave_process_group() -> None:
    """Under torchrun: wait for every process (the main one saves and evaluates), then tear the process group down,
    so that no process exits with gloo's threads still running (which aborts it)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _restore_soft_programs(model, checkpoint: str) -> None:
    """Soft mode keeps the trained programs in the checkpoint's library files, not in its model weights: attach
    them before the Trainer restores the rest."""
    from ..library import Library

    if getattr(model.config, "nc_mode", None) == "soft" and model.library is not None:
        model.config.nc_library_fingerprint = None
        model.attach_library(Library.load(checkpoint))


def train(recipe: dict, output_dir: Union[str, Path], *, resume: bool = False,
          recipe_path: Optional[Union[str, Path]] = None) -> dict:
    """Run a validated recipe; the final model, tokenizer, ``recipe.yaml``, ``train_log.json`` (log history, wall
    time, world size, parameter counts) and, with an ``eval`` section, ``eval_results.json``/``.md`` land in
    ``output_dir``. Returns the summary written to ``train_log.json``."""
    import yaml
    from transformers import Trainer
    from transformers.trainer_utils import get_last_checkpoint

    output_dir = Path(output_dir)
    model, tokenizer, kind = build_model(recipe["model"])
    if recipe["probe"]["steps"] and kind != "nclama":
        raise RecipeError("probe.steps: probes read an NCLlama's interpreter; this model is a plain LLaMA")
    unknown = [key for key in recipe["final_config"] if not hasattr(model.config, key)]
    if unknown:
        raise RecipeError(f"final_config: {', '.join(unknown)} not settings of {type(model.config).__name__}")
    heads_training = {k: recipe["training"][k] for k in _HEADS_TRAINING if k in recipe["training"]}
    if heads_training:
        if kind != "nclama":
            raise RecipeError(f"training: {', '.join(heads_training)} train an NCLlama's heads; this model is a plain LLaMA")
        from ..heads import HeadsTraining

        model.heads_training = HeadsTraining(**heads_training)
    trainable, total = apply_trainable(model, recipe["trainable"])
    _say(f"model: {kind}, {total:,} parameters, {trainable:,} trainable ({100 * trainable / max(total, 1):.1f}%)")
    max_length = recipe["data"]["max_length"] or getattr(model.config, "max_position_embeddings", None)
    dataset = build_train_dataset(recipe["data"], tokenizer, max_length)
    heads_learning_rate = recipe["training"].get("heads_learning_rate")
    tables_learning_rate = recipe["training"].get("tables_learning_rate")
    gate_scale_learning_rate = recipe["training"].get("gate_scale_learning_rate")
    args = training_arguments({k: v for k, v in recipe["training"].items() if k not in _OURS}, output_dir, kind)
    _say(f"data: {len(dataset):,} examples of {', '.join(recipe['data']['tasks'])} (loss on {recipe['data']['loss_on']} tokens)")
    print(f"[rank {args.process_index}/{args.world_size}] training on {args.device}", flush=True)
    callbacks = []
    if recipe["training"].get("cache_frozen_decoder"):  # first: the real decoder is back before probes and saving
        callbacks.append(FrozenDecoderCache(model, world_size=args.world_size))
    if recipe["probe"]["steps"]:
        probe_tasks = recipe["data"]["tasks"] + ([CLRS_TASK] if recipe["data"]["clrs_insertion_sort"] else [])
        chat = recipe["probe"]["chat"] if recipe["probe"]["chat"] is not None else recipe["data"]["chat"] > 0
        probes = build_probes(tokenizer, list(dict.fromkeys(probe_tasks)), recipe["probe"]["per_task"], recipe["probe"]["seed"],
                              recipe["data"]["max_value"], heldout=recipe["probe"]["heldout"], chat=chat)
        callbacks.append(ProbeCallback(probes, recipe["probe"]["steps"]))
    checkpoint = get_last_checkpoint(str(output_dir)) if resume and output_dir.is_dir() else None
    if not resume and output_dir.is_dir() and get_last_checkpoint(str(output_dir)):
        _say(f"{output_dir} holds checkpoints: starting fresh (--resume continues from the last one)")
    if resume:
        _say(f"resuming from {checkpoint}" if checkpoint else f"--resume: no checkpoint in {output_dir}, starting fresh")
        if checkpoint and kind == "nclama":
            _restore_soft_programs(model, checkpoint)
            apply_trainable(model, recipe["trainable"])
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=Collator(tokenizer),
                      processing_class=tokenizer, callbacks=callbacks,
                      optimizers=(heads_optimizer(model, args, heads_learning_rate, tables_learning_rate,
                                                  gate_scale_learning_rate), None)
                      if heads_learning_rate else (None, None))
    start = time.time()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    wall = time.time() - start
    for key, value in recipe["final_config"].items():
        setattr(trainer.model.config, key, value)
    # Trainer turns the KV cache off for training and the saved model would keep it off: generation would then
    # recompute every position at every step (a 200-token answer took a minute instead of seconds).
    trainer.model.config.use_cache = True
    trainer.model.generation_config.use_cache = True
    trainer.save_model(str(output_dir))  # model (+ library files), tokenizer; the main process writes
    summary = {
        "recipe": str(recipe_path) if recipe_path else None,
        "kind": kind,
        "resumed_from": checkpoint,
        "global_step": trainer.state.global_step,
        "world_size": args.world_size,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "train_examples": len(dataset),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "wall_time_s": wall,
        "steps_per_s": result.metrics.get("train_steps_per_second"),
        "metrics": result.metrics,
        "log_history": trainer.state.log_history,
    }
    if not trainer.is_world_process_zero():
        _leave_process_group()
        return summary
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    (output_dir / "train_log.json").write_text(json.dumps(summary, indent=1) + "\n")
    _say(f"saved the model, tokenizer, recipe.yaml and train_log.json to {output_dir} "
         f"({trainer.state.global_step} steps, {wall:.0f} s)")
    if recipe["eval"]:
        from .evaluation import evaluate_model, format_table, write_results

        spec = recipe["eval"]
        rows = evaluate_model(trainer.model, tokenizer, tasks=spec["tasks"], lengths=spec["lengths"],
                              n_per_length=spec["n"], seed=spec["seed"], split=spec["split"],
                              batch_size=spec["batch_size"], max_new_tokens=spec["max_new_tokens"], max_value=spec["max_value"],
                              chat=spec["chat"])
        paths = write_results(rows, output_dir)
        print(format_table(rows))
        print(f"wrote {paths[0]} and {paths[1]}")
        summary["eval"] = rows
    _leave_process_group()
    return summary
