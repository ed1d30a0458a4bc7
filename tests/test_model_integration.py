"""NCLlamaForCausalLM in the rest of transformers: outputs, resizing, gradient checkpointing, Trainer."""
import random

import pytest
import torch
from transformers import Trainer, TrainingArguments

from modeling_nclama.modeling_nclama import NCLlamaForCausalLM
from modeling_nclama.toolchain.tokenization import default_tokenizer, reader_tokens
from modeling_nclama import standard_library


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


@pytest.fixture
def model(tok, make_llama):
    model = NCLlamaForCausalLM.from_llama(make_llama(tok), standard_library(256), design="paper", reader_tokens=reader_tokens(tok))
    with torch.no_grad():
        model.nc_heads.gate_scale.fill_(0.5)  # open the gate, so the library takes part
    return model


def test_hidden_states_attentions_and_tuple_output(model, tok):
    batch = tok(["7!="], return_tensors="pt")
    model.set_attn_implementation("eager")  # attention weights exist only in eager attention, as in LLaMA
    out = model(**batch, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    as_tuple = model(**batch, return_dict=False)
    assert torch.allclose(as_tuple[0], out.logits)


def test_resize_token_embeddings(model, tok):
    model.resize_token_embeddings(len(tok) + 8)
    out = model(**tok(["81273+4406="], return_tensors="pt"))
    assert out.logits.shape[-1] == len(tok) + 8 and torch.isfinite(out.logits).all()


def test_gradient_checkpointing_gives_the_same_gradients(model, tok):
    batch = tok(["81273+4406=85679"], return_tensors="pt")
    model.train()

    def grads():
        model.zero_grad()
        model(**batch, labels=batch["input_ids"]).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.activation_checkpointing_enable()
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys() and any(k.startswith("nc_heads.") for k in plain)
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6), name


class Sums(torch.utils.data.Dataset):
    def __init__(self, tok, n=64, seed=0):
        rng = random.Random(seed)
        self.rows = []
        for _ in range(n):
            a, b = rng.randrange(10**6), rng.randrange(10**6)
            ids = tok(f"{a}+{b}={a + b}", add_special_tokens=True)["input_ids"] + [tok.eos_token_id]
            self.rows.append({"input_ids": torch.tensor(ids), "labels": torch.tensor(ids)})

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def test_trainer_smoke_run_lowers_the_loss_and_trains_the_heads(model, tok, tmp_path):
    before = {n: p.detach().clone() for n, p in model.nc_heads.named_parameters()}
    data = Sums(tok)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=1, per_device_eval_batch_size=1, max_steps=12, learning_rate=3e-3,
                             logging_steps=1, save_strategy="steps", save_steps=12, report_to=[], disable_tqdm=True, use_cpu=True)
    trainer = Trainer(model=model, args=args, train_dataset=data)
    first = trainer.evaluate(eval_dataset=Sums(tok, n=8, seed=1))["eval_loss"]
    trainer.train()
    last = trainer.evaluate(eval_dataset=Sums(tok, n=8, seed=1))["eval_loss"]
    assert last < first
    moved = [n for n, p in model.nc_heads.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert {"gate_scale", "call.scores.weight", "sites.scores.weight"} <= set(moved)
    checkpoint = tmp_path / "checkpoint-12"  # Trainer checkpoints carry the library and reload with it
    assert (checkpoint / "library.json").is_file() and (checkpoint / "library.safetensors").is_file()
    reloaded = NCLlamaForCausalLM.from_pretrained(checkpoint).eval()
    batch = tok(["81273+4406="], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, model.eval()(**batch).logits, atol=1e-5)
