"""``nclama bench model --base out/smollm2``: the model bench at the SmolLM2-135M shape, with its real weights and
tokenizer (a smoke run: one round, two new tokens; BENCHMARKS.md has the full run)."""
import pytest

from modeling_nclama.toolchain.bench import bench_model, format_model_table
from modeling_nclama.toolchain.cli import build_parser

pytestmark = pytest.mark.smollm2


def test_the_bench_runs_at_the_smollm2_shape(smollm2_folder):
    rows = bench_model(presets=(), bases=[str(smollm2_folder)], batch=2, new_tokens=2, repeats=1, num_threads=1)
    assert [row["preset"] for row in rows] == ["smollm2"] and rows[0]["threads"] == 1
    row = rows[0]
    assert row["batch"] == 2 and row["seq"] == 15  # "What is 81273 plus 4406?": 15 tokens (SmolLM2 writes digits alone)
    for model in ("llama", "nclama"):
        assert row[model]["train_ms"] > 0 and row[model]["tokens_per_s"] > 0
    # NCLlama keeps what LLaMA keeps for backward, plus its heads' few MiB
    assert row["llama"]["autograd_mib"] < row["nclama"]["autograd_mib"] < 1.2 * row["llama"]["autograd_mib"]
    assert "| smollm2 | 2 x 15 | 1 |" in format_model_table(rows)


def test_base_alone_benches_no_preset():
    args = build_parser().parse_args(["bench", "model", "--base", "out/smollm2"])
    assert args.base == ["out/smollm2"] and args.presets is None
