"""transformers' own common model tests, fetched from the installed release's source distribution.

``ModelTesterMixin`` (tests/test_modeling_common.py), ``ConfigTester`` (tests/test_configuration_common.py) and
``TrainingTesterMixin`` (tests/test_training_mixin.py) ship in the sdist of every transformers release, not in its
wheel. :func:`load` downloads the sdist of the installed version once (``pip download --no-binary :all:``), unpacks
those three files into ``out/transformers-tests/<version>/transformers_tests/`` and imports them from there; nothing
of transformers' test code is kept in this repository.

Three modules they import are not in the sdist; this file writes them:

- ``exporters/test_export.py``'s ``ExportTesterMixin`` (the ``torch.export`` tests, a base class of
  ``ModelTesterMixin``): empty. NCLlama declares fullgraph compile unsupported (``_can_compile_fullgraph``), and
  the export tests are not in this release's distribution to run on LLaMA either.
- ``generation/test_utils.py``'s ``GenerationTesterMixin``: empty; the generation properties are checked by
  tests/test_generation_properties.py with the gate open.
- ``utils/test_configuration_utils.py``'s ``config_common_kwargs`` (``ConfigTester.check_config_arguments_init``
  sets each and reads it back): written here from ``PreTrainedConfig``'s own arguments.
"""
from __future__ import annotations

import importlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers

ROOT = Path(__file__).resolve().parents[1] / "out" / "transformers-tests" / transformers.__version__
PACKAGE = "transformers_tests"
FILES = ("test_modeling_common.py", "test_configuration_common.py", "test_training_mixin.py")

# Every argument here differs from PreTrainedConfig's default, so that reading it back shows it was set.
CONFIG_COMMON_KWARGS = '''
config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "tie_word_embeddings": False,
    "chunk_size_feed_forward": 5,
    "architectures": ["BertModel"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
    "bos_token_id": 42,
    "pad_token_id": 43,
    "eos_token_id": 44,
    "sep_token_id": 45,
    "decoder_start_token_id": 46,
    "is_encoder_decoder": True,
    "add_cross_attention": True,
}
'''

SHIMS = {
    "__init__.py": "",
    "exporters/__init__.py": "",
    "exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    "generation/__init__.py": "",
    "generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    "utils/__init__.py": "",
    "utils/test_configuration_utils.py": CONFIG_COMMON_KWARGS,
}


def fetch(root: Path = ROOT) -> Path:
    """The folder holding the ``transformers_tests`` package for the installed release (downloaded once)."""
    package = root / PACKAGE
    if not all((package / name).is_file() for name in FILES):
        _download(package)
    for name, text in SHIMS.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    return root


def _download(package: Path) -> None:
    version = transformers.__version__
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
             f"transformers=={version}", "-d", tmp],
            capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"could not download the transformers {version} source distribution for its common "
                               f"tests (pip download needs PyPI):\n{done.stderr.strip()}")
        sdist, = Path(tmp).glob("transformers-*.tar.gz")
        with tarfile.open(sdist) as archive:
            for name in FILES:
                member = archive.getmember(f"transformers-{version}/tests/{name}")
                package.mkdir(parents=True, exist_ok=True)
                (package / name).write_bytes(archive.extractfile(member).read())


def load(module: str):
    """``transformers_tests.<module>``, fetched if needed."""
    root = str(fetch())
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module(f"{PACKAGE}.{module}")
