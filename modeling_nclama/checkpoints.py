"""Model folders (toolchain): ``nclama init`` makes a freshly initialized NCLlama from a preset; the folder is the
same kind ``save_pretrained`` writes (config, weights, tokenizer, library files, runtime code)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch
from transformers import AutoTokenizer

from .configuration_nclama import NCLlamaConfig
from .library import Library
from .modeling_nclama import NCLlamaForCausalLM, library_settings
from .tokenization import default_tokenizer, reader_tokens

PRESETS = Path(__file__).resolve().parents[1] / "configuration" / "models"


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
