"""The layout: the runtime (the flat modules of ``modeling_nclama``, what a Hub repo carries) never imports the
toolchain (``modeling_nclama/toolchain/``), neither in its source nor when a shipped model loads and answers."""
import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "modeling_nclama"
RUNTIME = sorted(p for p in PACKAGE.glob("*.py") if p.name != "__init__.py")


def test_the_runtime_source_imports_nothing_of_the_toolchain():
    assert {p.stem for p in RUNTIME} >= {"configuration_nclama", "modeling_nclama", "library", "machine", "ops",
                                          "program", "reader"}
    for path in RUNTIME:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            assert not any("toolchain" in n or "compiler" in n for n in names), (path.name, names)
        assert "toolchain" not in path.read_text().replace("toolchain.assembly.parse_assembly", ""), path.name


def test_a_shipped_model_loads_and_answers_without_the_toolchain():
    script = (
        "import sys, torch\n"
        "from modeling_nclama.modeling_nclama import NCLlamaForCausalLM\n"
        "from transformers import AutoTokenizer\n"
        "folder = sys.argv[1]\n"
        "model = NCLlamaForCausalLM.from_pretrained(folder).eval()\n"
        "tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)\n"
        "ids = tok('12+34=', return_tensors='pt')['input_ids']\n"
        "out = model.generate(ids, max_new_tokens=4, do_sample=False)\n"
        "print(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())\n"
        "print(sorted(m for m in sys.modules if m.startswith('modeling_nclama.toolchain')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(PACKAGE.parent / "hub_assets" / "nclama-tiny")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    answer, toolchain = done.stdout.strip().splitlines()[-2:]
    assert answer == "46" and toolchain == "[]"
