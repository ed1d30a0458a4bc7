"""NCLlama: a LLaMA decoder whose interpreter heads call a compiled library inside the forward pass.

At every position ``s`` the heads read the hidden state and choose a library *call*: a program (the call head) and
its operands (pointer attention over the numbers and lists that the compiled reader found earlier in the sequence).
The top-k (program, operands) choices are executed exactly by the library's hard machine (results are cached), and
each result becomes the tokens of its text, then the end-of-sequence token. At every position ``t`` a site pointer
chooses which earlier call site ``s`` is being answered, so the library proposes token ``t - s`` of that result; a gate
mixes the proposal with the language model:

    p(next token) = (1 - g m) p_LM + g p_lib,

where ``p_lib`` is the (exactly marginalized) library proposal and ``m`` its total mass. Gradients reach the gate,
call, operand and site heads through the likelihood, so calls are learned from answers alone. The gate's scale starts
at exactly 0: a model converted from LLaMA gives that LLaMA's logits.
"""
from __future__ import annotations

import itertools
import math
import os
from typing import Optional, Union

import torch
from torch import nn
from transformers import LlamaForCausalLM, LlamaModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import LlamaPreTrainedModel
from transformers.utils import can_return_tuple, cached_file
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_nclama import NCLlamaConfig
from .library import LIBRARY_JSON, LIBRARY_TENSORS, Library, LibraryError
from .reader import Operand, OperandReader

_RESULT_CACHE_SIZE = 100_000


def library_settings(library: Library, reader_tokens: dict, **nc_settings) -> dict:
    """The ``nc_*`` configuration of a model that calls ``library``: its programs (tape programs: those named
    ``long_*`` or ``*_tape``), machine, fingerprint and operand slots, plus the reader's table; ``nc_settings``
    override or add to them."""
    programs = nc_settings.pop("nc_programs", library.names)
    settings = {
        "nc_programs": programs,
        "nc_tape_programs": [p for p in programs if p.startswith("long_") or p.endswith("_tape")],
        "nc_value_size": library.value_size,
        "nc_memory_size": library.machine.memory_size,
        "nc_stack_depth": library.machine.stack_depth,
        "nc_max_operands": max(library[p].arity for p in programs),
        "nc_library_fingerprint": library.fingerprint(),
        "nc_reader_tokens": reader_tokens,
    }
    return {**settings, **nc_settings}


class NCInterpreterHeads(nn.Module):
    """Gate, call, operand-pointer and site-pointer heads on the decoder's hidden state."""

    def __init__(self, config: NCLlamaConfig):
        super().__init__()
        hidden, dim = config.hidden_size, config.nc_pointer_dim
        self.slots, self.dim = config.nc_max_operands, dim
        self.gate = nn.Linear(hidden, 1)
        self.gate_scale = nn.Parameter(torch.zeros(()))  # 0: closed, the model is exactly the base LLaMA
        self.call = nn.Linear(hidden, max(1, len(config.nc_programs)))
        self.operand_query = nn.Linear(hidden, self.slots * dim)
        self.operand_key = nn.Linear(hidden, dim)
        self.site_query = nn.Linear(hidden, dim)
        self.site_key = nn.Linear(hidden, dim)

    def gate_probability(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B, T] probability of answering from the library. The scale is clamped to [0, 1] in the forward pass
        but passes gradients straight through, so a closed gate can open."""
        scale = self.gate_scale + (self.gate_scale.clamp(0.0, 1.0) - self.gate_scale).detach()
        return torch.sigmoid(self.gate(hidden).squeeze(-1)) * scale


class NCLlamaPreTrainedModel(LlamaPreTrainedModel):
    config_class = NCLlamaConfig
    config: NCLlamaConfig

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, NCInterpreterHeads):
            init.zeros_(module.gate_scale)


class NCLlamaModel(NCLlamaPreTrainedModel, LlamaModel):
    """The decoder: LLaMA's, unchanged (the library acts on its output, in ``NCLlamaForCausalLM``)."""


class NCLlamaForCausalLM(NCLlamaPreTrainedModel, LlamaForCausalLM):
    def __init__(self, config: NCLlamaConfig):
        NCLlamaPreTrainedModel.__init__(self, config)
        self.model = NCLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.nc_heads = NCInterpreterHeads(config)
        self.reader = OperandReader(config.nc_reader_tokens)
        self.library: Optional[Library] = None
        self._results: dict = {}
        self.post_init()

    # ------------------------------------------------------------------ library
    def attach_library(self, library: Library) -> None:
        """Use ``library`` for calls; it must be the one the configuration was made for."""
        c = self.config
        if library.value_size != c.nc_value_size or library.machine.memory_size != c.nc_memory_size:
            raise LibraryError(
                f"library has value_size {library.value_size} and memory_size {library.machine.memory_size}; "
                f"the model was configured for {c.nc_value_size} and {c.nc_memory_size}"
            )
        missing = [name for name in c.nc_programs if name not in library]
        if missing:
            raise LibraryError(f"the library lacks programs the model calls: {missing}")
        if c.nc_library_fingerprint and library.fingerprint() != c.nc_library_fingerprint:
            raise LibraryError("the library's fingerprint differs from the model's nc_library_fingerprint")
        self.library = library
        self._results = {}

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Weights and config as usual, plus the library files (``library.safetensors``, ``library.json``)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.library is not None:
            self.library.save(save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load as usual, then load and attach the library saved beside the weights (local folder, Hub cache or
        Hub); a model configured with programs refuses to load without its library."""
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if model.config.nc_programs:
            options = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")
            hub = {k: kwargs[k] for k in options if k in kwargs}
            try:
                folder = os.path.dirname(cached_file(pretrained_model_name_or_path, LIBRARY_JSON, **hub))
                cached_file(pretrained_model_name_or_path, LIBRARY_TENSORS, **hub)
            except OSError as error:
                raise LibraryError(f"{pretrained_model_name_or_path}: the model's library files are missing ({error})") from None
            model.attach_library(Library.load(folder))
        return model

    @classmethod
    def from_llama(
        cls, model_or_path: Union[str, LlamaForCausalLM], library: Library, *, reader_tokens: dict, **nc_settings
    ) -> "NCLlamaForCausalLM":
        """Augment a LLaMA checkpoint (a model or a path/Hub id) with ``library``, keeping every pretrained weight.

        ``reader_tokens``: the operand reader's table for the checkpoint's tokenizer (``tokenization.reader_tokens``).
        Other ``nc_*`` settings go to the configuration; programs default to the whole library, tape programs to
        those named ``long_*`` or ``*_tape``.
        """
        llama = model_or_path if isinstance(model_or_path, nn.Module) else LlamaForCausalLM.from_pretrained(model_or_path)
        settings = {k: v for k, v in llama.config.to_dict().items() if k not in ("model_type", "architectures", "transformers_version")}
        config = NCLlamaConfig(**settings, **library_settings(library, reader_tokens, **nc_settings))
        model = cls(config)
        missing, unexpected = model.load_state_dict(llama.state_dict(), strict=False)
        if unexpected or any(not key.startswith("nc_heads.") for key in missing):
            raise ValueError(f"not a LLaMA state dict: unexpected {unexpected}, missing {missing}")
        model.attach_library(library)
        return model.to(next(llama.parameters()).dtype)

    # ------------------------------------------------------------------ forward
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        logits = self.lm_head(hidden_states)
        if self.library is not None and input_ids is not None and self.config.nc_programs:
            logits = self._fuse(input_ids, hidden_states, logits, cache)
        if not (isinstance(logits_to_keep, int) and logits_to_keep == 0):
            keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            logits = logits[:, keep, :]
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )

    def _fuse(self, input_ids: torch.Tensor, hidden: torch.Tensor, logits: torch.Tensor, cache: Optional[Cache]) -> torch.Tensor:
        """LM logits -> log of the gated mixture with the library's proposal (plus the LM's log-normalizer, so that
        a closed gate returns the LM logits themselves)."""
        ids, states = input_ids, hidden
        if cache is not None and hidden.shape[1] < cache.get_seq_length():  # generating: keep the whole sequence
            history = getattr(cache, "nc_history", None)
            if history is not None:
                ids, states = torch.cat([history[0], input_ids], 1), torch.cat([history[1], hidden], 1)
        if cache is not None:
            cache.nc_history = (ids, states.detach())
        new = hidden.shape[1]
        proposal, gate = self.library_proposal(ids, states)
        proposal, gate = proposal[:, -new:], gate[:, -new:]
        log_lm = torch.log_softmax(logits.float(), dim=-1)
        mass = proposal.sum(-1)
        from_library = gate.unsqueeze(-1) * proposal
        # log of the library term, -inf where it is 0 (clamped first, so no 0 * inf reaches the gradient)
        log_library = torch.where(from_library > 0, from_library.clamp_min(1e-30).log(), float("-inf"))
        mixed = torch.logaddexp(torch.log1p(-(gate * mass)).unsqueeze(-1) + log_lm, log_library)
        return (mixed + torch.logsumexp(logits.float(), dim=-1, keepdim=True)).to(logits.dtype)

    def library_proposal(self, input_ids: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, T, vocab] unnormalized library proposal for the next token, [B, T] gate)."""
        B, T, _ = hidden.shape
        heads, window = self.nc_heads, self.config.nc_answer_window
        gate = heads.gate_probability(hidden)
        proposal = hidden.new_zeros(B, T, self.config.vocab_size, dtype=torch.float32)
        # Site pointer: position t answers the call made at t - j, j in [0, window).
        offsets = torch.arange(window)
        sites = torch.arange(T).unsqueeze(1) - offsets  # [T, W]
        valid_site = sites >= 0
        site_keys = heads.site_key(hidden)  # [B, T, d]
        gathered = site_keys[:, sites.clamp(min=0)]  # [B, T, W, d]
        site_logits = torch.einsum("btd,btwd->btw", heads.site_query(hidden), gathered) / math.sqrt(heads.dim)
        site_probs = torch.softmax(site_logits.float().masked_fill(~valid_site, float("-inf")), dim=-1)
        for b in range(B):
            tokens, probs = self._site_results(input_ids[b].tolist(), hidden[b])  # [T, K, W], [T, K]
            if tokens is None:
                continue
            at_site = tokens[sites.clamp(min=0), :, offsets.unsqueeze(0).expand(T, -1)]  # [T, W, K]
            weight = site_probs[b].unsqueeze(-1) * probs[sites.clamp(min=0)]  # [T, W, K]
            weight = weight * (at_site >= 0) * valid_site.unsqueeze(-1)
            proposal[b] = proposal[b].scatter_add(1, at_site.clamp(min=0).reshape(T, -1), weight.reshape(T, -1))
        return proposal, gate

    def _site_results(self, ids: list[int], hidden: torch.Tensor) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """For every position as a call site: the top-k (program, operands) choices with their probabilities
        ([T, K], differentiable) and the tokens of their results ([T, K, W], -1 past the end)."""
        heads, config = self.nc_heads, self.config
        T, W, K = len(ids), config.nc_answer_window, config.nc_top_k
        operands = self.reader.read(ids)
        combos = self._combinations(operands)
        if not operands or not combos:
            return None, None
        ends = torch.tensor([o.end - 1 for o in operands])
        keys = heads.operand_key(hidden[ends])  # [C, d]
        queries = heads.operand_query(hidden).view(T, heads.slots, heads.dim)
        pointer_logits = torch.einsum("tsd,cd->tsc", queries, keys).float() / math.sqrt(heads.dim)
        available = ends.unsqueeze(0) <= torch.arange(T).unsqueeze(1)  # [T, C]: an operand is usable once read
        pointer = torch.softmax(pointer_logits.masked_fill(~available.unsqueeze(1), -1e9), dim=-1)  # [T, S, C]
        call = torch.softmax(heads.call(hidden).float(), dim=-1)  # [T, P]
        probs = []
        for program_index, chosen, _ in combos:
            p = call[:, program_index]
            for slot, operand_index in enumerate(chosen):
                p = p * pointer[:, slot, operand_index] * available[:, operand_index]
            probs.append(p)
        probs = torch.stack(probs, dim=1)  # [T, combos]
        top = probs.detach().topk(min(K, len(combos)), dim=1).indices  # [T, K]
        top_probs = probs.gather(1, top)
        self._execute([combos[i] for i in set(top.flatten().tolist())])
        tokens = torch.full((T, top.shape[1], W), -1, dtype=torch.long)
        for t, row in enumerate(top.tolist()):
            for k, combo_index in enumerate(row):
                result = self._results[self._key(combos[combo_index])]
                tokens[t, k, : len(result[:W])] = torch.tensor(result[:W], dtype=torch.long)
        return tokens, top_probs

    def _combinations(self, operands: list[Operand]) -> list[tuple[int, tuple[int, ...], tuple]]:
        """Every (program, operand choice) whose operand types fit the program's parameters, with its arguments."""
        V, library, config = self.config.nc_value_size, self.library, self.config
        out = []
        for program_index, name in enumerate(config.nc_programs):
            program = library[name]
            if program.arity > config.nc_max_operands:
                continue
            choices = []
            for _, ptype in program.params:
                fits = []
                for i, o in enumerate(operands):
                    if ptype == "int" and o.kind == "number" and o.number < V:
                        fits.append((i, o.number))
                    elif ptype == "list" and name in config.nc_tape_programs and o.kind == "number":
                        fits.append((i, [int(d) for d in reversed(o.items[0])]))
                    elif ptype == "list" and name not in config.nc_tape_programs and o.kind == "list" and max(o.values) < V:
                        fits.append((i, o.values))
                choices.append(fits)
            for picked in itertools.product(*choices):
                out.append((program_index, tuple(i for i, _ in picked), tuple(v for _, v in picked)))
        return out

    def _key(self, combo: tuple) -> tuple[str, str]:
        return self.config.nc_programs[combo[0]], repr(combo[2])

    def _execute(self, combos: list) -> None:
        """Run the calls whose results are not cached yet: one vectorized hard run per program."""
        todo: dict[str, dict] = {}
        for combo in combos:
            key = self._key(combo)
            if key not in self._results:
                todo.setdefault(key[0], {})[key] = combo[2]
        if len(self._results) + sum(map(len, todo.values())) > _RESULT_CACHE_SIZE:
            self._results.clear()
        for name, calls in todo.items():
            result = self.library.run_batch(name, list(calls.values()), max_steps=self.config.nc_max_steps)
            for key, value in zip(calls, result.values):  # a failed call (None) proposes only the end of text
                self._results[key] = self._text_tokens(name, value)

    def _text_tokens(self, name: str, value) -> list[int]:
        eos = self.config.eos_token_id
        eos = [eos[0] if isinstance(eos, list) else eos] if eos is not None else []
        if value is None:
            return eos
        if isinstance(value, int):
            return self.reader.number_tokens(str(value)) + eos
        if name in self.config.nc_tape_programs:
            digits = "".join(str(d) for d in reversed(value)).lstrip("0") or "0"
            return self.reader.number_tokens(digits) + eos
        out = []
        for i, item in enumerate(value):
            if i and self.reader.space_token is not None:
                out.append(self.reader.space_token)
            out += self.reader.number_tokens(str(item))
        return out + eos


# save_pretrained writes these files and the auto_map into the folder, so that the Auto classes load it with
# trust_remote_code=True wherever it goes (a local folder, the Hub).
NCLlamaConfig.register_for_auto_class()
NCLlamaModel.register_for_auto_class("AutoModel")
NCLlamaForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["NCLlamaForCausalLM", "NCLlamaModel", "NCLlamaPreTrainedModel", "NCInterpreterHeads"]
