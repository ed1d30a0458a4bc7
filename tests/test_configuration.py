"""NCLlamaConfig: presets, JSON round trip, clear errors."""
import json
import re
from pathlib import Path

import pytest
from transformers import LlamaConfig

from modeling_nclama.configuration_nclama import NCLlamaConfig

PRESETS = Path(__file__).resolve().parents[1] / "configuration" / "models"


@pytest.mark.parametrize("name", ["tiny", "small", "llama-3.2-1b"])
def test_presets_build_and_round_trip(name, tmp_path):
    settings = json.loads((PRESETS / f"{name}.json").read_text())
    config = NCLlamaConfig(**settings)
    assert isinstance(config, LlamaConfig) and config.model_type == "nclama"
    assert config.nc_memory_size == config.nc_value_size - 1
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "nclama" and saved["nc_mode"] == "hard"
    again = NCLlamaConfig.from_pretrained(tmp_path)
    assert again.to_dict() == config.to_dict()


def test_llama_3_2_1b_shapes():
    config = NCLlamaConfig(**json.loads((PRESETS / "llama-3.2-1b.json").read_text()))
    shapes = (config.vocab_size, config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
              config.num_key_value_heads, config.head_dim, config.intermediate_size)
    assert shapes == (128256, 2048, 16, 32, 8, 64, 8192)


def test_library_settings_round_trip(tmp_path):
    config = NCLlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=100,
                           nc_programs=["gcd", "long_add"], nc_reader_tokens={"17": "42"}, nc_library_fingerprint="ab" * 32)
    config.save_pretrained(tmp_path)
    again = NCLlamaConfig.from_pretrained(tmp_path)
    assert (again.nc_programs, again.nc_reader_tokens, again.nc_library_fingerprint) == (
        ["gcd", "long_add"], {"17": "42"}, "ab" * 32)
    # the reader's table is saved beside config.json, not in it, and read back from there (or from the file's path)
    assert "nc_reader_tokens" not in json.loads((tmp_path / "config.json").read_text())
    assert json.loads((tmp_path / "reader_tokens.json").read_text()) == {"17": "42"}
    assert NCLlamaConfig.from_pretrained(tmp_path / "config.json").nc_reader_tokens == {"17": "42"}
    assert "nc_reader_tokens" not in config.to_dict() and config.nc_reader_tokens == {"17": "42"}


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"nc_mode": "fuzzy"}, "nc_mode must be one of"),
        ({"nc_mode": "exact"}, "nc_mode must be one of ('hard', 'soft')"),
        ({"nc_top_k": 0}, "nc_top_k must be a positive int"),
        ({"nc_max_candidates": 0}, "nc_max_candidates must be a positive int"),
        ({"nc_layer": 2}, "nc_layer must be in [-2, 1]"),
        ({"nc_memory_size": 1024}, "nc_memory_size must be in [2, nc_value_size - 1 = 1023]"),
        ({"nc_operand_reader": "learned"}, "nc_operand_reader must be one of ('pointer', 'context')"),
        ({"nc_min_call_probability": 1.0}, "nc_min_call_probability must be in [0, 1)"),
        ({"nc_decimal_places": 4}, "nc_decimal_places must be 0, 1, 2 or 3"),
        ({"nc_site_reader": "words"}, "nc_site_reader must be one of ('hidden', 'tokens')"),
        ({"nc_gate_at": "answer"}, "nc_gate_at must be one of ('position', 'site')"),
        ({"nc_result_words": {"gcd": [" yes"]}}, "nc_result_words: 'gcd' is not in nc_programs"),
        ({"nc_decimal_places": 3}, "nc_decimal_places needs the '.' token in nc_reader_tokens"),
        ({"nc_residual_injection": True, "nc_layer": 1}, "nc_residual_injection needs nc_layer below the last layer (1)"),
        ({"nc_residual_injection": True, "nc_layer": -1}, "nc_residual_injection needs nc_layer below the last layer"),
        ({"nc_programs": ["gcd", "gcd"]}, "nc_programs must be distinct"),
        ({"nc_reader_tokens": {"5": "1234"}}, "not a text or a string of 1-3 digits"),
        ({"nc_reader_tokens": {"500": "1"}}, "below vocab_size 100"),
    ],
)
def test_invalid_settings_are_refused(settings, message):
    with pytest.raises(Exception, match=re.escape(message)):
        NCLlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=100, **settings)
