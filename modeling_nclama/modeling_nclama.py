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
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn
from transformers import LlamaForCausalLM, LlamaModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
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


@dataclass
class InterpreterState:
    """What the interpreter computed for the positions generated so far (kept on the KV cache)."""

    ids: torch.Tensor  # [B, T] token ids
    operand_keys: torch.Tensor  # [B, T, d] pointer keys of each position (an operand is keyed by its last token)
    site_keys: torch.Tensor  # [B, T, d]
    tokens: torch.Tensor  # [B, T, K, W] result tokens of each position's top-k calls
    probs: torch.Tensor  # [B, T, K] their probabilities

    def select(self, index: torch.Tensor) -> "InterpreterState":
        return InterpreterState(*(t.index_select(0, index) for t in (self.ids, self.operand_keys, self.site_keys, self.tokens, self.probs)))


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
        self._combination_cache: dict = {}
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
        self._results, self._combination_cache = {}, {}

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
        if isinstance(model_or_path, str):
            nc_settings.setdefault("nc_base_model", model_or_path)
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
        active = self.library is not None and input_ids is not None and bool(self.config.nc_programs)
        outputs, heads_hidden = self._run_decoder(
            active,
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
        if active:
            logits = self._fuse(input_ids, heads_hidden, logits, cache)
        logits = slice_logits_to_keep(logits, logits_to_keep)  # after fusion: the interpreter needs every position
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )

    def _run_decoder(self, active: bool, **inputs):
        """The decoder's outputs, and the hidden states the heads read (layer ``nc_layer``)."""
        layer = self.config.nc_layer % self.config.num_hidden_layers
        captured: list[torch.Tensor] = []
        hook = None
        if active and layer != self.config.num_hidden_layers - 1:
            hook = self.model.layers[layer].register_forward_hook(
                lambda module, args, out: captured.append(out[0] if isinstance(out, tuple) else out)
            )
        try:
            outputs = self.model(**inputs)
        finally:
            if hook is not None:
                hook.remove()
        return outputs, captured[0] if captured else outputs.last_hidden_state

    def _fuse(self, input_ids: torch.Tensor, hidden: torch.Tensor, logits: torch.Tensor, cache: Optional[Cache]) -> torch.Tensor:
        """LM logits -> log of the gated mixture with the library's proposal (plus the LM's log-normalizer, so that
        a closed gate returns the LM logits themselves). While generating, the interpreter's work on earlier
        positions is kept on the cache, so each position is read, called and executed once."""
        state = getattr(cache, "nc_state", None) if cache is not None else None
        if state is not None and state.ids.shape[1] + input_ids.shape[1] != cache.get_seq_length():
            state = None  # not this cache's continuation
        proposal, gate, state = self.library_proposal(input_ids, hidden, state)
        if cache is not None:
            cache.nc_state = state
        log_lm = torch.log_softmax(logits.float(), dim=-1)
        mass = proposal.sum(-1)
        from_library = gate.unsqueeze(-1) * proposal
        # log of the library term, -inf where it is 0 (clamped first, so no 0 * inf reaches the gradient)
        log_library = torch.where(from_library > 0, from_library.clamp_min(1e-30).log(), float("-inf"))
        lm_weight = torch.log1p(-(gate * mass).clamp(max=1.0))  # the mass may exceed 1 by rounding
        mixed = torch.logaddexp(lm_weight.unsqueeze(-1) + log_lm, log_library)
        return (mixed + torch.logsumexp(logits.float(), dim=-1, keepdim=True)).to(logits.dtype)

    @torch.no_grad()
    def generate_with_trace(self, input_ids: torch.LongTensor, max_trace_rows: int = 200, **generate_kwargs):
        """``generate`` for one prompt, plus its trace: per generated token, the gate, the call site answered (and
        its probability), the top calls there with their probabilities, operands (token positions and values),
        results and machine steps, and the machine's step table for the most likely call."""
        if input_ids.shape[0] != 1:
            raise ValueError(f"generate_with_trace takes one prompt, got a batch of {input_ids.shape[0]}")
        sequence = self.generate(input_ids=input_ids, **generate_kwargs)
        return sequence, self.explain(sequence[0], input_ids.shape[1], max_trace_rows=max_trace_rows)

    @torch.no_grad()
    def explain(self, sequence: torch.LongTensor, prompt_length: int, max_trace_rows: int = 200) -> list[dict]:
        """What the interpreter did for each token of ``sequence`` after the first ``prompt_length`` (see
        ``generate_with_trace``). Recomputed in one forward pass, which equals what generation computed."""
        if self.library is None:
            raise LibraryError("the model has no library attached")
        heads, W = self.nc_heads, self.config.nc_answer_window
        ids = sequence.tolist()
        _, hidden = self._run_decoder(True, input_ids=sequence[None], use_cache=False)
        gate = heads.gate_probability(hidden)[0]
        keys, queries = heads.site_key(hidden)[0], heads.site_query(hidden)[0]  # the heads see [B, T, H], as in forward
        call_probs = torch.softmax(heads.call(hidden).float(), dim=-1)[0]
        operand_queries = heads.operand_query(hidden)[0].view(-1, heads.slots, heads.dim)
        operand_keys = heads.operand_key(hidden)[0]
        rows = []
        for t in range(prompt_length - 1, len(ids) - 1):
            first = max(0, t - W + 1)
            site_probs = torch.softmax((keys[first : t + 1] @ queries[t]).float() / math.sqrt(heads.dim), dim=-1)
            p_site, index = site_probs.max(-1)
            site = first + int(index)
            choices, probs, operands = self._choices(ids[: site + 1], call_probs[site], operand_queries[site], operand_keys)
            self._execute(choices)
            calls = []
            for combo, p in zip(choices, probs.tolist()):
                name = self.config.nc_programs[combo[0]]
                run = self.library.run_batch(name, [combo[2]], max_steps=self.config.nc_max_steps)
                calls.append({
                    "program": name,
                    "probability": p,
                    "operands": [{"start": operands[i].start, "end": operands[i].end, "text": " ".join(operands[i].items)} for i in combo[1]],
                    "arguments": list(combo[2]),
                    "result": run.values[0],
                    "result_tokens": self._results[self._key(combo)],
                    "steps": run.steps[0],
                    "status": run.status[0],
                })
            row = {
                "position": t + 1,
                "token": ids[t + 1],
                "gate": float(gate[t]),
                "site": site,
                "site_probability": float(p_site),
                "offset": t - site,
                "calls": calls,
            }
            if calls and calls[0]["status"] == "ok":
                _, trace = self.library.run(calls[0]["program"], *calls[0]["arguments"], trace=True, max_steps=self.config.nc_max_steps)
                row["machine_trace"] = trace.format(max_rows=max_trace_rows)
            rows.append(row)
        return rows

    def _reorder_cache(self, cache: Cache, beam_idx: torch.LongTensor) -> Cache:
        """Beam search: reorder the KV cache and the interpreter's state together."""
        cache.reorder_cache(beam_idx)
        state = getattr(cache, "nc_state", None)
        if state is not None:
            cache.nc_state = state.select(beam_idx)
        return cache

    def library_proposal(
        self, input_ids: torch.Tensor, hidden: torch.Tensor, state: Optional["InterpreterState"] = None
    ) -> tuple[torch.Tensor, torch.Tensor, "InterpreterState"]:
        """For the positions of ``input_ids`` (following those in ``state``, if any): the unnormalized library
        proposal for the next token [B, N, vocab], the gate [B, N], and the state including them."""
        heads, config = self.nc_heads, self.config
        B, N = input_ids.shape
        W = config.nc_answer_window
        if state is None:
            ids, start = input_ids, 0
        else:
            ids, start = torch.cat([state.ids, input_ids], 1), state.ids.shape[1]
        T = ids.shape[1]
        site_keys = heads.site_key(hidden)
        calls = torch.softmax(heads.call(hidden).float(), dim=-1)  # [B, N, P]
        queries = heads.operand_query(hidden).view(B, N, heads.slots, heads.dim)
        operand_keys = heads.operand_key(hidden)  # [B, N, d]: an operand is keyed by its last token
        if state is not None:
            operand_keys = torch.cat([state.operand_keys, operand_keys], 1)
        tokens, probs = [], []
        for b in range(B):
            prefix = ids[b].tolist()
            row = [self._site(prefix[: s + 1], calls[b, s - start], queries[b, s - start], operand_keys[b]) for s in range(start, T)]
            tokens.append(torch.stack([t for t, _ in row]))
            probs.append(torch.stack([p for _, p in row]))
        tokens, probs = torch.stack(tokens), torch.stack(probs)  # [B, N, K, W], [B, N, K]
        if state is not None:
            site_keys = torch.cat([state.site_keys, site_keys], 1)
            tokens, probs = torch.cat([state.tokens, tokens], 1), torch.cat([state.probs, probs], 1)
        # Site pointer: position t answers the call made at t - j, j in [0, W), with token j of its result.
        offsets = torch.arange(W)
        sites = torch.arange(start, T).unsqueeze(1) - offsets  # [N, W]
        valid = sites >= 0
        sites = sites.clamp(min=0)
        site_logits = torch.einsum("bnd,bnwd->bnw", heads.site_query(hidden), site_keys[:, sites]) / math.sqrt(heads.dim)
        site_probs = torch.softmax(site_logits.float().masked_fill(~valid, float("-inf")), dim=-1)
        at_site = tokens[:, sites, :, offsets.expand_as(sites)].permute(2, 0, 1, 3)  # [N, W, B, K] -> [B, N, W, K]
        weight = site_probs.unsqueeze(-1) * probs[:, sites] * (at_site >= 0) * valid.unsqueeze(-1)
        proposal = hidden.new_zeros(B, N, config.vocab_size, dtype=torch.float32)
        proposal = proposal.scatter_add(2, at_site.clamp(min=0).reshape(B, N, -1), weight.reshape(B, N, -1))
        new_state = InterpreterState(ids, operand_keys.detach(), site_keys.detach(), tokens, probs.detach())
        return proposal, heads.gate_probability(hidden), new_state

    def _site(self, ids: list[int], call: torch.Tensor, query: torch.Tensor, operand_keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The call made at the last position of ``ids``: its top-k choices' probabilities [K] (differentiable) and
        result tokens [K, W] (-1 past the end, and for missing choices)."""
        K, W = self.config.nc_top_k, self.config.nc_answer_window
        tokens = torch.full((K, W), -1, dtype=torch.long)
        probs = call.new_zeros(K)
        choices, chosen_probs, _ = self._choices(ids, call, query, operand_keys)
        if not choices:
            return tokens, probs
        self._execute(choices)
        for k, combo in enumerate(choices):
            result = self._results[self._key(combo)][:W]
            tokens[k, : len(result)] = torch.tensor(result, dtype=torch.long)
        return tokens, torch.cat([chosen_probs, probs[len(choices):]])

    def _choices(self, ids: list[int], call: torch.Tensor, query: torch.Tensor, operand_keys: torch.Tensor) -> tuple[list, torch.Tensor, list[Operand]]:
        """The top-k (program, operands) choices of the call at the last position of ``ids`` (``call`` [P]: the call
        head's distribution there, ``query`` [S, d]: its operand queries, ``operand_keys`` [>= len(ids), d]), their
        probabilities, and the operands the reader found. Operands are those in the prefix, so that a position's call
        never depends on what comes after it."""
        heads = self.nc_heads
        operands = self.reader.read(ids)
        combos = self._combinations(operands)
        if not combos:
            return [], call.new_zeros(0), operands
        keys = operand_keys[torch.tensor([o.end - 1 for o in operands])]  # [C, d]
        pointer = torch.softmax((query @ keys.T).float() / math.sqrt(heads.dim), dim=-1)  # [S, C]
        p = call[torch.tensor([c[0] for c in combos])]
        for slot in range(heads.slots):
            chosen = torch.tensor([c[1][slot] if slot < len(c[1]) else -1 for c in combos])
            p = p * torch.where(chosen >= 0, pointer[slot, chosen.clamp(min=0)], torch.ones_like(p))
        top = p.detach().topk(min(self.config.nc_top_k, len(combos))).indices
        return [combos[i] for i in top.tolist()], p[top], operands

    def _combinations(self, operands: list[Operand]) -> list[tuple[int, tuple[int, ...], tuple]]:
        """Every (program, operand choice) whose operand types fit the program's parameters, with its arguments
        (memoized: consecutive positions of a sequence mostly see the same operands)."""
        key = tuple((o.kind, o.items, o.bracketed) for o in operands)
        if key not in self._combination_cache:
            if len(self._combination_cache) >= _RESULT_CACHE_SIZE:
                self._combination_cache.clear()
            self._combination_cache[key] = self._enumerate(operands)
        return self._combination_cache[key]

    def _enumerate(self, operands: list[Operand]) -> list[tuple[int, tuple[int, ...], tuple]]:
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
                bracketed = any(operands[i].bracketed for i, _ in picked)  # a list result is written the same way
                out.append((program_index, tuple(i for i, _ in picked), tuple(v for _, v in picked), bracketed))
        return out

    def _key(self, combo: tuple) -> tuple[str, str, bool]:
        return self.config.nc_programs[combo[0]], repr(combo[2]), combo[3]

    def _execute(self, combos: list) -> None:
        """Run the calls whose results are not cached yet: one vectorized hard run per program."""
        todo: dict[str, dict] = {}
        for combo in combos:
            key = self._key(combo)
            if key not in self._results:
                todo.setdefault(key[0], {})[key] = combo
        if len(self._results) + sum(map(len, todo.values())) > _RESULT_CACHE_SIZE:
            self._results.clear()
        for name, calls in todo.items():
            result = self.library.run_batch(name, [c[2] for c in calls.values()], max_steps=self.config.nc_max_steps)
            for (key, combo), value in zip(calls.items(), result.values):  # a failed call proposes only the end
                self._results[key] = self._text_tokens(name, value, combo[3])

    def _text_tokens(self, name: str, value, bracketed: bool) -> list[int]:
        eos = self.config.eos_token_id
        eos = [eos[0] if isinstance(eos, list) else eos] if eos is not None else []
        if value is None:
            return eos
        if isinstance(value, int):
            return self.reader.number_tokens(str(value)) + eos
        if name in self.config.nc_tape_programs:
            digits = "".join(str(d) for d in reversed(value)).lstrip("0") or "0"
            return self.reader.number_tokens(digits) + eos
        return self.reader.list_tokens(value, bracketed) + eos


# save_pretrained writes these files and the auto_map into the folder, so that the Auto classes load it with
# trust_remote_code=True wherever it goes (a local folder, the Hub).
NCLlamaConfig.register_for_auto_class()
NCLlamaModel.register_for_auto_class("AutoModel")
NCLlamaForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["NCLlamaForCausalLM", "NCLlamaModel", "NCLlamaPreTrainedModel", "NCInterpreterHeads"]
