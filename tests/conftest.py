"""Shared fixtures of the end-to-end tests: libraries compiled once per session, the SmolLM2 base built once."""
import os

import pytest
import torch

from modeling_nclama import compile_library, standard_library

V = 256

# Two sources of user programs used by several test files.
USER_SOURCE = '''
def is_even(n):
    if n == 0:
        return 1
    return is_odd(n - 1)


def is_odd(n):
    if n == 0:
        return 0
    return is_even(n - 1)


def add(a, b):
    return a + b


def double_all(xs):
    out = [0] * len(xs)
    for i in range(len(xs)):
        out[i] = xs[i] + xs[i]
    return out
'''

FAULTY_SOURCE = '''
def spin(n):
    while n < 255:
        n = n + 0
    return n


def forever(n):
    return forever(n + 1)


def spill(n):
    xs = [1] * n
    return xs


def two_lists(n):
    xs = [1] * n
    ys = [2] * n
    return xs
'''


@pytest.fixture(scope="module")
def one_thread():
    """The machine's tensors are small: on a busy 2-core box, intra-op threads cost far more than they give
    (a 30x25 softmax takes ~8 ms with 2 contended threads, ~3 us with one). Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``; the setting is restored after the module."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def std():
    """The standard library at V = 256, compiled once."""
    return standard_library(value_size=V)


@pytest.fixture(scope="session")
def user_source():
    return USER_SOURCE


@pytest.fixture(scope="session")
def user_lib():
    return compile_library(USER_SOURCE, value_size=V)


@pytest.fixture(scope="session")
def faulty_lib():
    return compile_library(FAULTY_SOURCE, value_size=V)


@pytest.fixture(scope="session")
def make_llama():
    """A tiny random LLaMA for a tokenizer (seeded), the base that model tests convert with ``from_llama``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    def make(tok, seed: int = 0):
        torch.manual_seed(seed)
        config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, eos_token_id=tok.eos_token_id,
                             bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
        return LlamaForCausalLM(config)

    return make


def _smollm2_missing():
    """Why the tests marked ``smollm2`` cannot run here (None when they can)."""
    from modeling_nclama.toolchain.bases import BaseError, source_file

    try:
        source_file("smollm2-135m-instruct")
    except BaseError as error:
        return str(error)
    return None


def pytest_collection_modifyitems(config, items):
    """Tests marked ``smollm2`` need the real model: skipped where its packages are absent (`make test` installs
    them), except under NCLAMA_REQUIRE_SMOLLM2=1 (.ci/run), where they run and fail, so CI never skips them."""
    marked = [item for item in items if item.get_closest_marker("smollm2")]
    if not marked or os.environ.get("NCLAMA_REQUIRE_SMOLLM2") == "1":
        return
    reason = _smollm2_missing()
    if reason:
        for item in marked:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def smollm2_folder(tmp_path_factory):
    """The plain SmolLM2-135M-Instruct folder (float32) that ``nclama base smollm2-135m-instruct`` builds, built
    once per session (about 15-40 s on one thread). Tests that use it are marked ``pytest.mark.smollm2``; they must
    not write into it."""
    from modeling_nclama.toolchain.bases import build_base

    reason = _smollm2_missing()
    if reason and os.environ.get("NCLAMA_REQUIRE_SMOLLM2") != "1":
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("bases") / "smollm2"
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        build_base("smollm2-135m-instruct", folder, log=None)
    finally:
        torch.set_num_threads(previous)
    return folder


@pytest.fixture
def isolated_hf_home(tmp_path, monkeypatch):
    """A fresh HF_HOME (Hub cache, token) for a push and download, with no token or offline flag from outside."""
    from huggingface_hub import constants

    home = tmp_path / "hf_home"
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return home
