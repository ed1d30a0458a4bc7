"""Shared fixtures of the end-to-end tests: libraries compiled once per session."""
import pytest
import torch

from modeling_nclama import Library

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
    return Library.standard(value_size=V)


@pytest.fixture(scope="session")
def user_source():
    return USER_SOURCE


@pytest.fixture(scope="session")
def user_lib():
    return Library.from_source(USER_SOURCE, value_size=V)


@pytest.fixture(scope="session")
def faulty_lib():
    return Library.from_source(FAULTY_SOURCE, value_size=V)


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
