"""NCLlama: a LLaMA decoder whose interpreter heads call a compiled library inside the forward pass.

At every position ``s`` the heads read the hidden state and choose a library *call*: a program (the call head, over
the programs that fit the operands; with ``nc_call_reader="keywords"`` it reads the prompt's words instead of the
hidden state) and its operands (pointer attention over the numbers and lists that the compiled reader found earlier
in the sequence).
The top-k (program, operands) choices are executed exactly by the library's hard machine (results are cached), and
each result becomes the tokens of its text, then the end-of-sequence token. Each position ``t`` either continues
the answer of the position before it (one token further into the same call's result) or starts a new answer with
the first token of its own call (a learned probability), so the library proposes token ``t - s`` of the result of
the call made at ``s``; a gate mixes the proposal with the language model:

    p(next token) = (1 - g m) p_LM + g p_lib   (with 1 - g m at least 1e-6),

where ``p_lib`` is the (exactly marginalized) library proposal and ``m`` its total mass (with ``nc_closers_from_lm``,
the mass the library puts on a list's closing bracket is shared among the closing tokens, "]", "]\n", "].", as the
LM prefers them: the library says that the list ends, the LM says what punctuation ends it; ``nc_openers_from_lm``
does the same for the opening bracket, "[" or " ["). Gradients reach the gate,
call, operand and continuation heads through the likelihood, so calls are learned from answers alone. The gate's scale starts
at exactly 0: a model converted from LLaMA gives that LLaMA's logits.
"""

import inspect
import itertools
import math
import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers import LlamaForCausalLM, LlamaModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.masking_utils import create_causal_mask, find_packed_sequence_indices
from transformers.modeling_utils import slice_logits_to_keep
from transformers.processing_utils import Unpack
from transformers.models.llama.modeling_llama import LlamaPreTrainedModel
from transformers.utils import TransformersKwargs, can_return_tuple, cached_file
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_nclama import NCLlamaConfig
from .library import LIBRARY_JSON, LIBRARY_TENSORS, Library, LibraryError
from .machine import MachineError
from .reader import Operand, OperandReader, Style

_RESULT_CACHE_SIZE = 100_000  # executed calls kept (their result tokens)
_MENU_CACHE_SIZE = 20_000  # operand sets whose fitting calls are kept in tensor form
_LM_FLOOR = 1e-6  # the least mass the language model keeps in the output mixture
_UNLIKELY = "not run: its proposal would weigh less than nc_min_call_probability"
_CONTINUES = 1e4  # a continuation logit whose sigmoid is 1.0 in float32: the position is never a call site


def call_budget(kinds: Sequence[str], arguments: Sequence, max_steps: int) -> int:
    """The step budget of one call: ``1000 + 64 s^2`` steps for operands of size ``s`` (an int parameter counts its
    value, a list or a number of any length its machine cells), at most ``max_steps``. The standard library's
    programs are at most quadratic in that size (the costliest per cell, long_gcd, takes about 23 s^2: 15,000 steps
    for two 12-digit numbers), so a call that runs out was not going to answer, and a wrong call on small operands
    stops early instead of running to ``max_steps``."""
    size = 0
    for kind, argument in zip(kinds, arguments):
        if kind == "int":
            size += argument
        elif kind == "tape":
            size += len(str(abs(argument))) + 1
        elif kind == "numbers":
            size += 1 + len(argument) * (1 + max((len(str(abs(v))) for v in argument), default=1))
        else:
            size += 1 + len(argument)
    return int(min(max_steps, 1000 + 64 * size * size))


def library_settings(library: Library, reader_tokens: dict, **nc_settings) -> dict:
    """The ``nc_*`` configuration of a model that calls ``library``: its programs, machine, fingerprint and operand
    slots, plus the reader's table; ``nc_settings`` override or add to them. What each program takes and returns
    (an int, a list of values, a number of any length, a list of such numbers) is read from its compiled signature."""
    programs = nc_settings.pop("nc_programs", library.names)
    settings = {
        "nc_programs": programs,
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
    """What the interpreter computed for the positions read so far, kept with the KV cache that holds the same
    positions (``interpreter_state``): generation continues it one token at a time, beam search reorders it with the
    cache, and when the cache is cropped (assisted decoding) or repeated per returned sequence it follows
    (``follow``)."""

    ids: torch.Tensor  # [B, T] token ids
    operand_keys: torch.Tensor  # [B, T, d] pointer keys of each position (an operand is keyed by its last token)
    tokens: torch.Tensor  # [B, T, K, W] result tokens of each position's top-k calls
    probs: torch.Tensor  # [B, T, K] their probabilities
    site_history: tuple  # chunks [B, n, t] of the site each position answers, over the sites before it
    keyword_history: torch.Tensor  # [B, T, P] the keyword call reader's evidence at each position ([B, T, 0] without it)
    gates: torch.Tensor  # [B, T] each position's own gate (read by later positions that answer it, nc_gate_at="site")

    @property
    def length(self) -> int:
        return self.ids.shape[1]

    @property
    def last_sites(self) -> torch.Tensor:
        """[B, T] the site the last position answers, over sites."""
        last = self.site_history[-1][:, -1]
        return torch.nn.functional.pad(last, (0, self.length - last.shape[1]))

    @property
    def keywords(self) -> torch.Tensor:
        """[B, P] the keyword call reader's evidence at the last position."""
        return self.keyword_history[:, -1]

    def _fields(self) -> tuple:
        return self.ids, self.operand_keys, self.tokens, self.probs, self.keyword_history, self.gates

    def _build(self, fields, site_history) -> "InterpreterState":
        ids, operand_keys, tokens, probs, keyword_history, gates = fields
        return InterpreterState(ids, operand_keys, tokens, probs, tuple(site_history), keyword_history, gates)

    def select(self, index: torch.Tensor) -> "InterpreterState":
        """The rows ``index`` (beam search's reordering)."""
        return self._build([t.index_select(0, index) for t in self._fields()],
                           [c.index_select(0, index) for c in self.site_history])

    def crop(self, length: int) -> "InterpreterState":
        """The state of the first ``length`` positions, as the interpreter had it after reading them."""
        history, kept = [], 0
        for chunk in self.site_history:
            if kept >= length:
                break
            history.append(chunk[:, : length - kept])
            kept += history[-1].shape[1]
        return self._build([t[:, :length] for t in self._fields()], history)

    def follow(self, cache_length: int, batch_size: int) -> "InterpreterState":
        """This state for a cache of ``cache_length`` positions and ``batch_size`` rows: cropped when the cache was
        cropped, each row repeated when the cache's rows were (``num_return_sequences``, beams from one prompt)."""
        state = self
        if cache_length < state.length:
            state = state.crop(cache_length)
        if batch_size != state.ids.shape[0] and batch_size % state.ids.shape[0] == 0:
            repeats = batch_size // state.ids.shape[0]
            state = state._build([t.repeat_interleave(repeats, 0) for t in state._fields()],
                                 [c.repeat_interleave(repeats, 0) for c in state.site_history])
        if (state.length, state.ids.shape[0]) != (cache_length, batch_size):
            raise ValueError(f"the cache holds {cache_length} positions of {batch_size} rows, the interpreter's state "
                             f"{state.length} of {state.ids.shape[0]}: continue a cache with the model that filled it")
        return state


@dataclass
class HeadsTraining:
    """How the interpreter heads learn, beside the likelihood (training only: set on ``model.heads_training`` by a
    training recipe's ``training`` section; not part of the model's configuration, never saved).

    gate_learning_floor: in training (with labels), the gate head learns as if the gate's scale were at least this,
        and where the gate is below it the library's proposal learns each answer token on its own, as an expert of
        the mixture (an added loss term of value 0, gradient ``-(floor - g) d log q(y)``). A converted model starts
        with the gate closed, where those heads get no gradient from the mixture: with a floor they learn where and
        what the library answers while the gate is still closed. In [0, 1]; 0: off.
    gate_target_weight: the weight of a loss that teaches the gate, from the answers alone, to choose the expert
        that answers right: at each answer token the library proposes (at least half its mass), the gate of the call
        site it answers is trained by binary cross-entropy toward 1 if the proposal gives the token at least 1/2,
        toward 0 if not and the LM does. The mixture's own gradient opens a gate only where the library does better
        than the LM; this breaks the tie toward the library, which runs the same at every length. >= 0; 0: off.
    """

    gate_learning_floor: float = 0.0
    gate_target_weight: float = 0.0

    def __post_init__(self):
        floor, weight = self.gate_learning_floor, self.gate_target_weight
        if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor <= 1:
            raise ValueError(f"gate_learning_floor must be in [0, 1], got {floor!r}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ValueError(f"gate_target_weight must be a number >= 0, got {weight!r}")


def interpreter_state(cache: Optional[Cache]) -> Optional[InterpreterState]:
    """The interpreter's state kept with ``cache`` (None: the cache holds nothing the interpreter read)."""
    return getattr(cache, "nc_state", None) if cache is not None else None


class NCInterpreterHeads(nn.Module):
    """Gate, call, operand (pointer or context) and site-continuation heads, on the decoder's hidden
    state or on token tables, and the optional residual injection of the library's proposal."""

    def __init__(self, config: NCLlamaConfig):
        super().__init__()
        hidden, dim = config.hidden_size, config.nc_pointer_dim
        self.slots, self.dim = config.nc_max_operands, dim
        self.gate = nn.Linear(hidden, 1)
        self.gate_scale = nn.Parameter(torch.zeros(()))  # 0: closed, the model is exactly the base LLaMA
        programs = max(1, len(config.nc_programs))
        if config.nc_call_reader == "hidden":
            self.call = nn.Linear(hidden, programs)
        else:
            self.call_keywords = nn.Embedding(config.vocab_size, programs)
        self.bos_token_id = config.bos_token_id
        # the tokens that end a sentence ("?", "].", "."): the words a call reads are those of its own sentence
        reader = OperandReader(config.nc_reader_tokens, config.nc_decimal_places)
        self.sentence_ends = sorted(reader.sentence_ends)
        # minus tokens ("-", " -", "[-"): a sign is the first token of the number it writes, so no answer starts at
        # one (else an answer "-76867" could be the LM's "-" followed by a call for 76867 with its operands reversed)
        self.sign_tokens = sorted(reader.signs)
        # the chat template's own tokens (nc_chat_tokens): no words, sentence ends or call sites, except that a break
        # ("\n" after "<|im_start|>assistant") is where the assistant's answer is called
        chat = {int(token): role for token, role in config.nc_chat_tokens.items()}
        self.chat_tokens = sorted(chat)
        self.chat_markers = sorted(token for token, role in chat.items() if role == "marker")
        self.chat_breaks = sorted(token for token, role in chat.items() if role == "break")
        if config.nc_operand_reader == "pointer":
            self.operand_query = nn.Linear(hidden, self.slots * dim)
            self.operand_key = nn.Linear(hidden, dim)
        else:  # context: per (program, slot); the last row of a token table: no token
            self.operand_before = nn.Embedding(config.vocab_size + 1, programs * self.slots)
            self.operand_after = nn.Embedding(config.vocab_size + 1, programs * self.slots)
            self.operand_rank = nn.Embedding(config.nc_max_candidates, programs * self.slots)
        if config.nc_site_reader == "hidden":
            self.site_continue = nn.Linear(hidden, 1)
        else:
            self.site_token = nn.Embedding(config.vocab_size + 1, 1)  # the position's own token
            self.site_previous = nn.Embedding(config.vocab_size + 1, 1)  # the token before it
            # every digit token reads one shared row (the last): a digit continues a number whatever its value
            self.digit_tokens = sorted(int(t) for t, text in config.nc_reader_tokens.items()
                                       if text.isascii() and text.isdigit())
        if config.nc_residual_injection:
            self.inject = nn.Linear(hidden, hidden, bias=False)  # zero at init: the decoder is unchanged
        if config.nc_answer_lead:  # per call-site token: the result is written with the space before it
            self.answer_lead = nn.Embedding(config.vocab_size, 1)  # zero at init: either way alike

    def resize_token_tables(self, vocab_size: int) -> None:
        """Follow the model's vocabulary to ``vocab_size`` tokens: the tables indexed by token id keep the rows of
        the tokens that remain, new tokens get zero rows (no evidence either way), and the tables' extra last row
        (no token; every digit) stays last."""
        for name in ("call_keywords", "answer_lead", "operand_before", "operand_after", "site_token", "site_previous"):
            old = getattr(self, name, None)
            if old is None:
                continue
            extra = 1 if name.startswith(("operand_", "site_")) else 0
            rows = old.num_embeddings - extra
            table = nn.Embedding(vocab_size + extra, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
            with torch.no_grad():
                table.weight.zero_()
                kept = min(rows, vocab_size)
                table.weight[:kept] = old.weight[:kept]
                if extra:
                    table.weight[-1] = old.weight[-1]
            table.weight.requires_grad_(old.weight.requires_grad)
            setattr(self, name, table)
        self.digit_tokens = [t for t in getattr(self, "digit_tokens", ()) if t < vocab_size]
        for name in ("sentence_ends", "sign_tokens", "chat_tokens", "chat_markers", "chat_breaks"):
            setattr(self, name, [t for t in getattr(self, name) if t < vocab_size])

    def lead_probability(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, N] probability that a call made at each position of ``ids`` writes its result with the space before
        it (``nc_answer_lead``)."""
        return torch.sigmoid(self.answer_lead(ids).float().squeeze(-1))

    def gate_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B, T] logit of each position's own gate opening (before the scale)."""
        return self.gate(hidden).float().squeeze(-1)

    def gate_probability(self, logits: torch.Tensor, learning_floor: float = 0.0) -> torch.Tensor:
        """[B, T] probability of answering from the library, from the gate logits. The scale is clamped to [0, 1] in
        the forward pass but passes gradients straight through, so a closed gate can open (``learning_floor``:
        ``HeadsTraining.gate_learning_floor``)."""
        scale = self.gate_scale.clamp(0.0, 1.0)
        if scale.requires_grad:
            scale = self.gate_scale + (scale - self.gate_scale).detach()
        opening = torch.sigmoid(logits)
        gate = opening * scale
        if self.training and learning_floor > 0:  # same value; the gate head learns as if scale >= floor
            lift = (scale.detach().clamp(min=learning_floor) - scale.detach())
            gate = gate + (opening - opening.detach()) * lift
        return gate

    def template_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, T] whether each position of ``ids`` is the chat template's: a marker of ``nc_chat_tokens`` and the
        template tokens after it, up to the first break ("\n") or the first token that is not the template's (a
        position's own and earlier tokens decide, as for everything a position reads; the message after a header
        is content even where it starts with a token the header also has)."""
        if not self.chat_markers:
            return torch.zeros_like(ids, dtype=torch.bool)
        index = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        marker = torch.isin(ids, torch.tensor(self.chat_markers, dtype=torch.long, device=ids.device))
        other = ~torch.isin(ids, torch.tensor(self.chat_tokens, dtype=torch.long, device=ids.device))
        after_break = torch.nn.functional.pad(torch.isin(ids, torch.tensor(self.chat_breaks, dtype=torch.long,
                                                                           device=ids.device))[:, :-1], (1, 0))
        last_marker = torch.where(marker, index, -1).cummax(1).values
        last_end = torch.where((other | after_break) & ~marker, index, -1).cummax(1).values
        return last_marker > last_end

    def silent_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, T] the positions that make no call: the chat template's markers and headers (a break, the "\n" that
        opens a turn's content, may: the assistant's answer is called there)."""
        breaks = torch.tensor(self.chat_breaks, dtype=torch.long, device=ids.device)
        return self.template_positions(ids) & ~torch.isin(ids, breaks)

    def segments(self, ids: torch.Tensor, after_end: Optional[torch.Tensor] = None,
                 history: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[B, N] the index of the sentence each position of ``ids`` is in: a new one starts at a beginning-of-sequence
        token, after a token that ends a sentence and after the chat template (``after_end`` [B]: the token before
        ``ids`` ended one; ``history`` [B, S]: the tokens before ``ids``, read instead). The template's positions
        start and end none: they stay in the sentence before them, so that the assistant's turn reads the user's
        question."""
        return self._sentences(ids, after_end, history)[0]

    def _sentences(self, ids: torch.Tensor, after_end: Optional[torch.Tensor] = None,
                   history: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``segments`` and the template positions of ``ids`` [B, N]."""
        full = ids if history is None else torch.cat([history, ids], 1)
        template = self.template_positions(full)
        ends = torch.isin(full, torch.tensor(self.sentence_ends, dtype=torch.long, device=ids.device)) & ~template
        starts = torch.nn.functional.pad(ends[:, :-1] | template[:, :-1], (1, 0))
        if after_end is not None and history is None:
            starts[:, 0] |= after_end
        if self.bos_token_id is not None:
            starts |= full == self.bos_token_id
        starts &= ~template
        counts = torch.cumsum(starts.long(), 1)
        if history is not None and history.shape[1]:  # numbered from the sentence of the token before ids
            counts = counts[:, history.shape[1]:] - counts[:, history.shape[1] - 1 : history.shape[1]]
        return counts, template[:, full.shape[1] - ids.shape[1]:]

    def keyword_evidence(self, ids: torch.Tensor, carried: Optional[torch.Tensor] = None,
                         after_end: Optional[torch.Tensor] = None, history: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Keyword call reader: per position of ``ids`` [B, N] and program, the best score of the tokens of its
        sentence so far [B, N, P] (``segments``; ``carried`` [B, P]: that of the position before ``ids``, whose
        sentence ended if ``after_end``; ``history``: the tokens before ``ids``, from which that is read instead). A
        running max restarted at each sentence: a later segment's scores are lifted above every earlier one's before
        the cumulative max, which then never reaches back past its segment. The chat template's tokens are no words:
        they score 0 and sort below every word of their sentence, so they carry the evidence of the words before
        them. The max's own gradient would reach one token per program and position, so that a keyword learns only
        once it already wins; in training the gradient is instead that of the softmax-weighted mean of the
        segment's scores (the value stays the max): every token of the prompt learns at once, the likeliest winners
        most."""
        scores = self.call_keywords(ids).float()
        segment, template = self._sentences(ids, after_end, history)
        if carried is not None:  # the carried evidence counts as a token of the segment before the first one here
            scores = torch.cat([carried.unsqueeze(1).float(), scores], 1)
            segment = torch.cat([segment.new_zeros(ids.shape[0], 1), segment], 1)
            template = torch.cat([template.new_zeros(ids.shape[0], 1), template], 1)
        templated = bool(template.any())
        if templated:
            scores = scores.masked_fill(template.unsqueeze(-1), 0.0)
        bound = scores.detach().abs().amax()
        lift = (bound * 2 + 1) * segment.unsqueeze(-1)
        keys = scores.detach() + lift
        if templated:  # below every word of the segment, above every earlier segment
            keys = torch.where(template.unsqueeze(-1), lift - bound - 0.5, keys)
        where = torch.cummax(keys, dim=1).indices
        best = scores.gather(1, where)
        if torch.is_grad_enabled() and scores.requires_grad:
            N = scores.shape[1]
            same = (segment.unsqueeze(2) == segment.unsqueeze(1)) & torch.ones(N, N, dtype=torch.bool).tril()  # [B, t, j]
            if templated:  # the words only; a position with none before it in its sentence weighs itself (score 0)
                same = same & ~template.unsqueeze(1)
                same = same | (~same.any(2, keepdim=True) & torch.eye(N, dtype=torch.bool))
            weights = torch.softmax(scores.unsqueeze(1).masked_fill(~same.unsqueeze(-1), float("-inf")), dim=2)
            mean = (weights * scores.unsqueeze(1)).sum(2)  # [B, N, P]
            best = best.detach() + (mean - mean.detach())
        return best[:, 1:] if carried is not None else best

    def continuation_logits(self, hidden: torch.Tensor, ids: torch.Tensor, start: int) -> torch.Tensor:
        """[B, N] logit that each new position (``ids[:, start:]``, hidden states ``hidden``) continues the answer of
        the position before it: from the hidden state, or from the position's token and its predecessor (all digit
        tokens alike); a minus sign always continues."""
        signs = torch.isin(ids[:, start:], torch.tensor(self.sign_tokens, dtype=torch.long, device=ids.device))
        return self._read_continuation(hidden, ids, start).masked_fill(signs, _CONTINUES)

    def _read_continuation(self, hidden: torch.Tensor, ids: torch.Tensor, start: int) -> torch.Tensor:
        if hasattr(self, "site_continue"):
            return self.site_continue(hidden).float().squeeze(-1)
        previous = torch.nn.functional.pad(ids, (1, 0), value=self.bos_token_id or 0)[:, start:-1]
        vocab = self.site_token.num_embeddings - 1
        digits = torch.tensor(self.digit_tokens, dtype=torch.long, device=ids.device)
        classes = torch.arange(vocab, device=ids.device).index_fill(0, digits, vocab)  # a digit token -> the last row
        return (self.site_token(classes[ids[:, start:]]) + self.site_previous(classes[previous])).float().squeeze(-1)

    def context_logits(self, before: torch.Tensor, after: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
        """Context reader: the score of each candidate operand [G, O] for each program and slot [G, P, S, O], from
        the token before it, the token after it (``vocab_size``: none) and its rank from the latest candidate."""
        scores = self.operand_before(before) + self.operand_after(after) + self.operand_rank(rank)  # [G, O, P * S]
        return scores.float().view(*before.shape, -1, self.slots).permute(0, 2, 3, 1)

    def injection(self, interpreted: "Interpreted", embeddings: torch.Tensor) -> torch.Tensor:
        """What residual injection adds to the hidden state: the expected embedding of the first result token of the
        call made at the position itself, through a learned map. Neither gated nor sent through the site recurrence:
        later layers may use a result that the output does not copy (a comparison's 0, 1 or 2 read as "yes" or
        "no"). The calls' probabilities are held fixed here: a call is chosen for giving the answer, not for what its
        result tells the LM (with signed results the LM learned to answer "Is a less than b?" from the sign of
        a - b, and the call head to call long_sub for it)."""
        tokens, probs = interpreted.own_tokens, interpreted.own_probs.detach()
        weights = (probs * (tokens >= 0)).to(embeddings.dtype)  # [B, N, K]
        return self.inject(torch.einsum("bnk,bnkh->bnh", weights, embeddings[tokens.clamp(min=0)]))


class NCLlamaPreTrainedModel(LlamaPreTrainedModel):
    config_class = NCLlamaConfig
    config: NCLlamaConfig

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, NCInterpreterHeads):
            init.zeros_(module.gate_scale)
            if hasattr(module, "inject"):
                init.zeros_(module.inject.weight)
            if hasattr(module, "answer_lead"):
                init.zeros_(module.answer_lead.weight)


class NCLlamaModel(NCLlamaPreTrainedModel, LlamaModel):
    """The decoder: LLaMA's layers and weights, in a loop that hands the hidden states of layer ``nc_layer`` to the
    interpreter (``at_layer``, given by ``NCLlamaForCausalLM``) and goes on from what it returns (the same states,
    or with the library's proposal injected: ``nc_residual_injection``). The last layer is handed over after the
    final norm, as the LM head reads it. Without ``at_layer`` it is LLaMA's decoder."""

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        at_layer: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if position_ids is None:
            past_seen_tokens = cache.get_seq_length() if cache is not None else 0
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens).unsqueeze(0)
        causal_mask = create_causal_mask(config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                         cache=cache, position_ids=position_ids)
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        layers = self.config.num_hidden_layers
        read_at = self.config.nc_layer % layers
        for index, decoder_layer in enumerate(self.layers[:layers]):
            hidden_states = decoder_layer(hidden_states, attention_mask=causal_mask, position_embeddings=position_embeddings,
                                          position_ids=position_ids, cache=cache, use_cache=use_cache, **kwargs)
            if at_layer is not None and index == read_at < layers - 1:
                hidden_states = at_layer(hidden_states)
        hidden_states = self.norm(hidden_states)
        if at_layer is not None and read_at == layers - 1:
            hidden_states = at_layer(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache)


class NCLlamaForCausalLM(NCLlamaPreTrainedModel, LlamaForCausalLM, GenerationMixin):
    # The interpreter reads token ids on the CPU and branches on what it finds (which numbers the reader found,
    # which calls fit them, their cached results): no single graph holds it, so fullgraph compile and torch.export
    # are not offered.
    _can_compile_fullgraph = False

    def __init__(self, config: NCLlamaConfig):
        NCLlamaPreTrainedModel.__init__(self, config)
        self.model = NCLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.nc_heads = NCInterpreterHeads(config)
        self.reader = OperandReader(config.nc_reader_tokens, config.nc_decimal_places)
        # Bracket token groups whose proposed mass the LM shares out; ids, not tensors: from_pretrained builds the
        # model on the meta device, where a tensor made here would hold no data.
        brackets = [(config.nc_openers_from_lm, self.reader.openers), (config.nc_closers_from_lm, self.reader.closers)]
        self._shared = [sorted(group) for on, group in brackets if on and group]
        self.library: Optional[Library] = None
        self._results: dict = {}  # hard calls' result tokens, for the step budget and window in _results_budget
        self._menus: dict = {}  # per operands: the calls that fit and the results run so far
        self._results_budget: Optional[tuple] = None
        self.heads_training = HeadsTraining()  # how the heads learn; set by training, never saved
        self.post_init()

    # ------------------------------------------------------------------ library
    def attach_library(self, library: Library, program_sharpness: float = 20.0) -> None:
        """Use ``library`` for calls; it must be the one the configuration was made for. In soft mode the programs'
        weights become parameters that train with the model (freeze them with
        ``model.nc_program_weights.requires_grad_(False)``); a compiled program's impossible choices (logit -inf)
        start ``program_sharpness`` below their row's best, so that they have a gradient (probability e^-20: the
        program still computes exactly to float precision)."""
        if isinstance(program_sharpness, bool) or not isinstance(program_sharpness, (int, float)) or not (
                0 < program_sharpness < float("inf")):
            raise ValueError(f"program_sharpness must be a positive finite number, got {program_sharpness!r}")
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
        if c.nc_mode == "soft":
            # The programs' weights become parameters (saved in the library files, not in model.safetensors).
            self.nc_program_weights = nn.ModuleDict({
                name: nn.ParameterDict({
                    field: nn.Parameter(_trainable(w, program_sharpness))
                    for field, w in library[name].weights.items() if w.numel()
                })
                for name in c.nc_programs
            })
            self._keys_to_ignore_on_save = set(self._keys_to_ignore_on_save or ()) | {
                f"nc_program_weights.{name}" for name, _ in self.nc_program_weights.named_parameters()
            }
            library = library.with_programs(
                [library[name].with_weights({**library[name].weights, **self.nc_program_weights[name]}) for name in c.nc_programs]
            )
        self.library = library
        self._results, self._menus = {}, {}

    def trained_library(self) -> Optional[Library]:
        """The attached library with the programs' current weights (in soft mode they train with the model)."""
        if self.library is None or self.config.nc_mode != "soft":
            return self.library
        return self.library.with_programs([
            self.library[name].with_weights({k: w.detach().clone() for k, w in self.library[name].weights.items()})
            for name in self.config.nc_programs
        ])

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Weights and config as usual, plus the library files (``library.safetensors``, ``library.json``); the
        configuration's fingerprint names the library saved (in soft mode, with the programs as trained)."""
        library = self.trained_library()
        if library is not None:
            self.config.nc_library_fingerprint = library.fingerprint()
        super().save_pretrained(save_directory, *args, **kwargs)
        if library is not None:
            library.save(save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, library: Optional[Library] = None, **kwargs):
        """Load as usual, then attach the library: ``library`` if given (it must be the one the configuration names),
        else the library files saved beside the weights (local folder, Hub cache or Hub). A model configured with
        programs refuses to load without its library; ``output_loading_info=True`` returns (model, info) as usual."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if library is not None:
            model.attach_library(library)
        elif model.config.nc_programs and model.library is None:
            if pretrained_model_name_or_path is None:
                raise LibraryError("from_pretrained(None, config=..., state_dict=...): pass the model's library "
                                   "(library=Library.load(folder)): there is no folder to load it from")
            options = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")
            hub = {k: kwargs[k] for k in options if k in kwargs}
            try:
                folder = os.path.dirname(cached_file(pretrained_model_name_or_path, LIBRARY_JSON, **hub))
                cached_file(pretrained_model_name_or_path, LIBRARY_TENSORS, **hub)
            except OSError as error:
                raise LibraryError(f"{pretrained_model_name_or_path}: the model's library files are missing ({error}); "
                                   "pass library= to load the weights with a library of your own") from None
            model.attach_library(Library.load(folder))
        return loaded

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True):
        """LLaMA's resize, and the interpreter follows: the reader forgets tokens that no longer exist (their
        numbers cannot be read or written), the heads' token tables are resized, and no cached result stays."""
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        size = embeddings.num_embeddings
        config = self.config
        config.nc_reader_tokens = {t: text for t, text in config.nc_reader_tokens.items() if int(t) < size}
        config.nc_chat_tokens = {t: role for t, role in config.nc_chat_tokens.items() if int(t) < size}
        self.reader = OperandReader(config.nc_reader_tokens, config.nc_decimal_places)
        brackets = [(config.nc_openers_from_lm, self.reader.openers), (config.nc_closers_from_lm, self.reader.closers)]
        self._shared = [sorted(group) for on, group in brackets if on and group]
        self.nc_heads.resize_token_tables(size)
        self._results, self._menus = {}, {}
        return embeddings

    @classmethod
    def from_llama(
        cls, model_or_path: Union[str, LlamaForCausalLM], library: Library, *, reader_tokens: dict, **nc_settings
    ) -> "NCLlamaForCausalLM":
        """Augment a LLaMA checkpoint (a model or a path/Hub id) with ``library``, keeping every pretrained weight.

        ``reader_tokens``: the operand reader's table for the checkpoint's tokenizer (``tokenization.reader_tokens``).
        Other ``nc_*`` settings go to the configuration; programs default to the whole library, digit tapes follow
        the standard library's naming (see ``library_settings``).
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
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        ids = input_ids
        if ids is None and inputs_embeds is not None and self.library is not None:
            ids = self.ids_of_embeddings(inputs_embeds)
        active = self.library is not None and ids is not None and ids.shape[1] > 0 and bool(self.config.nc_programs)
        state = None
        if active and cache is not None and cache.get_seq_length() > 0:  # read before the decoder extends the cache
            state = interpreter_state(cache)
            if state is None:
                raise ValueError(f"the cache holds {cache.get_seq_length()} positions that NCLlama's interpreter has "
                                 "not read (filled by another model, or from packed sequences): pass the whole "
                                 "sequence, or a cache this model filled")
            state = state.follow(cache.get_seq_length(), ids.shape[0])
        packed = None
        if active and position_ids is not None and attention_mask is None and cache is None and not (
                use_cache if use_cache is not None else self.config.use_cache):
            # where the decoder reads packed sequences apart (position ids restarting, no mask, no cache), so does
            # the interpreter
            packed = find_packed_sequence_indices(position_ids.expand(ids.shape[0], -1))
        outputs, interpreted = self._run_decoder(
            active,
            state,
            ids=ids,
            packed=packed,
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
        heads_losses = []  # the interpreter's own training terms (HeadsTraining)
        if active:
            if outputs.cache is not None and interpreted.state is not None:  # kept for the next steps
                outputs.cache.nc_state = interpreted.state
            shared = [torch.tensor(group, dtype=torch.long, device=logits.device) for group in self._shared]
            lm_logits, logits = logits, self._fuse(logits, interpreted, shared)
            floor, target_weight = self.heads_training.gate_learning_floor, self.heads_training.gate_target_weight
            if labels is not None and self.training and (floor > 0 or target_weight > 0):
                q = self._proposed_answer(lm_logits, interpreted, shared, labels)
                if floor > 0:
                    heads_losses.append(self._learning_floor_loss(q, interpreted, labels, floor,
                                                                  kwargs.get("num_items_in_batch")))
                if target_weight > 0:
                    heads_losses.append(target_weight * self._gate_target_loss(q, lm_logits, interpreted, labels))
        logits = slice_logits_to_keep(logits, logits_to_keep)  # after fusion: the interpreter needs every position
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
            loss = loss + sum(heads_losses)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )

    def ids_of_embeddings(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """[B, T] the token whose embedding each vector of ``inputs_embeds`` is (the interpreter reads tokens); a
        vector that is no token's embedding (a soft prompt) reads as the BOS token: no number, no word."""
        table = self.get_input_embeddings().weight
        vectors = inputs_embeds.detach().to(table.dtype)
        nearest = torch.cdist(vectors.reshape(-1, vectors.shape[-1]).float(), table.detach().float()).argmin(-1)
        exact = (table[nearest].detach() == vectors.reshape(-1, vectors.shape[-1])).all(-1)
        none = self.config.bos_token_id if self.config.bos_token_id is not None else 0
        return torch.where(exact, nearest, torch.full_like(nearest, none)).view(vectors.shape[:-1])

    def _run_decoder(self, active: bool, state: Optional[InterpreterState], record: Optional[dict] = None,
                     ids: Optional[torch.Tensor] = None, packed: Optional[torch.Tensor] = None, **inputs):
        """The decoder's outputs and, when ``active``, the interpreter's output on the hidden states of layer
        ``nc_layer`` (the decoder hands them over in its loop, so that residual injection reaches later layers)."""
        ids = inputs.get("input_ids") if ids is None else ids
        found: list[Interpreted] = []

        def at_layer(hidden: torch.Tensor) -> torch.Tensor:
            found[:] = [self._interpret(ids, hidden, state, record, packed)]
            if not self.config.nc_residual_injection:
                return hidden
            return hidden + self.nc_heads.injection(found[0], self.get_input_embeddings().weight)

        outputs = self.model(**inputs, at_layer=at_layer if active else None)
        return outputs, found[0] if found else None

    def _interpret(self, ids: torch.Tensor, hidden: torch.Tensor, state: Optional[InterpreterState],
                   record: Optional[dict], packed: Optional[torch.Tensor]) -> "Interpreted":
        """``interpret``, each packed sequence read alone (``packed`` [B, T]: the sequence each position belongs to,
        or None): the sequences are read as one right-padded batch and their outputs put back in place. A packed
        row keeps no state: it continues no cache."""
        if packed is None:
            return self.interpret(ids, hidden, state, record)
        B, T = ids.shape
        pieces = []
        for b, row in enumerate(packed.tolist()):
            bounds = [0, *(t for t in range(1, T) if row[t] != row[t - 1]), T]
            pieces += [(b, begin, end) for begin, end in zip(bounds, bounds[1:])]
        L = max(end - begin for _, begin, end in pieces)
        pad = self.config.pad_token_id if self.config.pad_token_id is not None else 0
        sub_ids = ids.new_full((len(pieces), L), pad)
        sub_hidden = hidden.new_zeros(len(pieces), L, hidden.shape[-1])
        for i, (b, begin, end) in enumerate(pieces):
            sub_ids[i, : end - begin], sub_hidden[i, : end - begin] = ids[b, begin:end], hidden[b, begin:end]
        read = self.interpret(sub_ids, sub_hidden, None, None)

        def place(tensor: Optional[torch.Tensor], fill=0, square: bool = False, width: Optional[int] = None):
            if tensor is None:
                return None
            if square:  # [S, L, L] over positions and sites
                out = tensor.new_full((B, T, T), fill)
            else:
                out = tensor.new_full((B, T, *tensor.shape[2:-1], width or tensor.shape[-1]) if tensor.dim() > 2
                                      else (B, T), fill)
            for i, (b, begin, end) in enumerate(pieces):
                n = end - begin
                if square:
                    out[b, begin:end, begin:end] = tensor[i, :n, :n]
                elif tensor.dim() == 2:
                    out[b, begin:end] = tensor[i, :n]
                else:
                    out[b, begin:end, ..., : tensor.shape[-1]] = tensor[i, :n]
            return out

        return Interpreted(place(read.proposal), place(read.proposed_tokens), place(read.mass), place(read.gate),
                           None, place(read.own_tokens, -1), place(read.own_probs),
                           place(read.site_probs, width=min(self.config.nc_answer_window, T)),
                           place(read.gate_logits), place(read.sites, square=True))

    @staticmethod
    def _fuse(logits: torch.Tensor, interpreted: "Interpreted", shared: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """LM logits -> log of the gated mixture with the library's proposal, up to the LM's log-normalizer (so that
        a closed gate returns the LM logits themselves):

            log((1 - g m) softmax(l) + g q) + logsumexp(l) = logaddexp(l + log(1 - g m), log(g q) + logsumexp(l)),

        which is ``l + log(1 - g m)`` wherever the proposal ``q`` is 0: only the tokens the library proposes (a few
        per position) need the full formula, so the vocabulary-wide work is one shift and one scatter. ``shared``:
        groups of token ids (a list's closing tokens, its opening ones) whose proposed mass is shared within each
        group as the LM's softmax does."""
        logits32 = logits.float()
        gate, tokens = interpreted.gate, interpreted.proposed_tokens
        proposal = _shared_brackets(interpreted.proposal, logits32, shared)
        if shared:
            tokens = torch.cat([tokens, *(group.expand(*tokens.shape[:-1], -1) for group in shared)], -1)
        # The language model keeps at least _LM_FLOOR of the mass (and the library's mass may exceed 1 by rounding):
        # every token keeps a finite log-probability and gradient, even under a fully open gate.
        lm_weight = torch.log1p(-(gate * interpreted.mass).clamp(max=1.0 - _LM_FLOOR)).unsqueeze(-1)
        tokens, _ = tokens.sort(dim=-1)
        first = torch.ones_like(tokens, dtype=torch.bool)
        first[..., 1:] = tokens[..., 1:] != tokens[..., :-1]
        proposed = proposal.gather(2, tokens)
        from_library = gate.unsqueeze(-1) * proposed  # a token's whole mass, wherever it repeats
        # log of the library term, -inf where it is 0 (clamped first, so no 0 * inf reaches the gradient)
        log_library = torch.where(from_library > 0, from_library.clamp_min(1e-30).log(), float("-inf"))
        lse = torch.logsumexp(logits32, dim=-1, keepdim=True)
        mixed = torch.logaddexp(logits32.gather(2, tokens) + lm_weight, log_library + lse)
        # Where the library's term is 0 (a closed gate) the log above passes it no gradient, though the mixture's
        # derivative there is q / p(token) for the gate and g / p(token) for q: add those first-order terms (value 0),
        # so that a closed gate learns whether opening helps.
        if torch.is_grad_enabled() and (gate.requires_grad or proposed.requires_grad):
            closed = from_library <= 0
            g = gate.unsqueeze(-1)
            first_order = torch.where(closed, g * proposed.detach() - (g * proposed).detach() + (proposed - proposed.detach()) * g.detach(), 0.0)
            mixed = mixed + first_order / (mixed - lse).detach().exp().clamp_min(1e-30)  # value 0, never 0/0
        mixed = torch.where(first, mixed, mixed.detach())  # a repeated token is written again, but counted once
        return (logits32 + lm_weight).scatter(2, tokens, mixed).to(logits.dtype)

    @staticmethod
    def _proposed_answer(lm_logits: torch.Tensor, interpreted: "Interpreted", shared: Sequence[torch.Tensor],
                         labels: torch.Tensor) -> torch.Tensor:
        """[B, N - 1] the library proposal's probability ``q(y)`` of each next token ``y`` (``labels`` shifted; a
        shared bracket's mass split as the LM prefers), with its gradient: what the heads' own training terms read."""
        index = labels[:, 1:].clamp(min=0).unsqueeze(-1)  # position t predicts token t + 1
        proposal = _shared_brackets(interpreted.proposal[:, :-1], lm_logits[:, :-1].detach().float(), shared)
        return proposal.gather(2, index).squeeze(-1)

    @staticmethod
    def _learning_floor_loss(q: torch.Tensor, interpreted: "Interpreted", labels: torch.Tensor, floor: float,
                             num_items_in_batch: Optional[Union[int, torch.Tensor]] = None) -> torch.Tensor:
        """A term of value 0 for the loss (``HeadsTraining.gate_learning_floor``): where the gate is below ``floor``, the library's
        proposal learns the answer as an expert of the mixture on its own: gradient ``-(floor - g) d log q(y)`` per
        answer token ``y`` (averaged like the loss), ``q`` the proposal. Not the mixture's own gradient at a gate
        raised to the floor, ``(floor - g) (dq(y) - p_LM(y) dm) / p(y)``: where the LM already answers well, that one
        is small, and its second term (the mass of wrong proposals, taken back) pays a head as well for proposing
        nothing (a site without a call) as for finding the right call; the two balance and nothing is learned (the
        comparison, whose answer the LM guesses right two times in three, was never called). Where no call proposes
        ``y`` the term has no gradient."""
        valid = labels[:, 1:] != -100
        weight = (floor - interpreted.gate[:, :-1].detach()).clamp(min=0) / q.detach().clamp_min(1e-30)
        total = -(weight * (q - q.detach()) * valid).sum()
        return total / (num_items_in_batch if num_items_in_batch is not None else valid.sum().clamp(min=1))

    @staticmethod
    def _gate_target_loss(q: torch.Tensor, lm_logits: torch.Tensor, interpreted: "Interpreted",
                          labels: torch.Tensor) -> torch.Tensor:
        """The gate's own target (``HeadsTraining.gate_target_weight``): at each answer token ``y`` the library proposes (mass
        >= 1/2), the gate is a choice between two experts, trained toward the right one: open (1) where the proposal
        gives ``y`` at least 1/2, the LM or not (a tie goes to the library); closed (0) where it does not and the LM
        does; no target where neither does (a gate closed there would stop its call from learning). The loss is the
        binary cross-entropy of the own gate logit ``z_s`` of each site ``s`` answered, weighted by ``P(site s | t)``
        (held fixed: the target teaches the gate, not where answers start), averaged over the tokens the library
        proposes. Only the gate logits learn."""
        targets = labels[:, 1:]  # position t predicts token t + 1
        index = targets.clamp(min=0).unsqueeze(-1)
        library_right = q.detach() >= 0.5
        lm_right = torch.log_softmax(lm_logits[:, :-1].detach().float(), -1).gather(2, index).squeeze(-1) >= math.log(0.5)
        answered = (targets != -100) & (interpreted.mass[:, :-1].detach() >= 0.5)
        z = interpreted.gate_logits
        losses = torch.stack([torch.nn.functional.softplus(-z), torch.nn.functional.softplus(z)])  # open, closed
        if interpreted.sites is None:
            losses = losses[:, :, :-1]
        else:  # the sites of this pass
            losses = torch.einsum("bts,kbs->kbt", interpreted.sites[:, :-1, -z.shape[1]:].detach(), losses)
        to_open, to_close = answered & library_right, answered & ~library_right & lm_right
        return ((losses[0] * to_open).sum() + (losses[1] * to_close).sum()) / answered.sum().clamp(min=1)

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
        mode = self.config.nc_mode
        ids = sequence.tolist()
        record: dict = {}
        _, interpreted = self._run_decoder(True, None, record, input_ids=sequence[None], use_cache=False)
        gate = interpreted.gate[0]
        rows = []
        done: dict = {}  # each distinct call runs (and is traced) once, however many tokens answer its site

        def run(name: str, args: list, mode: Optional[str] = None, max_steps: Optional[int] = None):
            """``run_batch`` of one call (``mode`` None), else ``run`` with its trace in ``mode``; remembered."""
            key = (name, repr(args), mode, max_steps)
            if key not in done:
                try:
                    done[key] = (self.library.run_batch(name, [args], max_steps=max_steps) if mode is None
                                 else self.library.run(name, *args, mode=mode, trace=True, max_steps=max_steps))
                except MachineError as error:
                    done[key] = error
            if isinstance(done[key], MachineError):
                raise done[key]
            return done[key]

        for t in range(prompt_length - 1, len(ids) - 1):
            p_site, offset = interpreted.site_probs[0, t].max(-1)
            site = t - int(offset)
            calls = []
            for recorded in record.get((0, site), []):
                name, args = self.config.nc_programs[recorded.call.program], _plain(recorded.call.arguments)
                kinds = [kind for _, kind in self.library[name].params]
                budget = call_budget(kinds, recorded.call.arguments, self.config.nc_max_steps)
                if recorded.problem is not None:
                    result, steps, status = None, 0, recorded.problem
                elif mode == "hard":
                    ran = run(name, args, max_steps=budget)
                    result, steps, status = ran.values[0], ran.steps[0], ran.status[0]
                    if status == "max_steps":
                        status = f"max_steps: did not finish within its budget of {budget} steps"
                else:  # what the soft machine's most likely result is, and its (expected) steps
                    try:
                        result, trace = run(name, args, "soft", self.config.nc_max_steps)
                        steps, status = len(trace.steps), "ok"
                    except MachineError as error:
                        result, steps, status = None, None, str(error)
                calls.append({
                    "program": name,
                    "probability": recorded.probability,
                    "operands": [
                        {"start": o.start, "end": o.end, "text": " ".join(o.items)} if o is not None else {"value": a}
                        for o, a in zip(recorded.operands, args)
                    ],
                    "arguments": args,
                    "result": result,
                    "result_tokens": recorded.tokens,
                    "steps": steps,
                    "status": status,
                })
            row = {
                "position": t + 1,
                "token": ids[t + 1],
                "gate": float(gate[t]),
                # the gate as the mixture applies it (g m in _fuse): a call that failed or did not run proposes
                # nothing, so an open gate with no result leaves the token to the language model
                "library_weight": min(float(gate[t] * interpreted.mass[0, t]), 1.0),
                "site": site,
                "site_probability": float(p_site),
                "offset": t - site,
                "calls": calls,
            }
            reason = self._no_call_reason(ids[: site + 1], calls)
            if reason is not None:
                row["no_call_reason"] = reason
            if calls and calls[0]["status"] == "ok":
                _, trace = run(calls[0]["program"], calls[0]["arguments"], mode, self.config.nc_max_steps)
                row["machine_trace"] = trace.format(max_rows=max_trace_rows)
            rows.append(row)
        return rows

    def _no_call_reason(self, prefix: list[int], calls: list[dict]) -> Optional[str]:
        """Why the library does not answer at a call site whose prefix holds operands, or None where it answers (or
        where there is nothing to read): no program takes operands of these kinds, or the likeliest call could not
        run or failed."""
        operands = self._operands(prefix)
        if not operands:
            return None
        if not calls:
            described = ", ".join(_describe(o) for o in operands[-3:])
            return f"no library program takes these operands ({described}): the language model answered alone"
        top = calls[0]
        if top["status"] == "ok":
            return None
        return f"the library could not answer ({top['program']}: {top['status']}): the language model answered alone"

    def _reorder_cache(self, cache: Cache, beam_idx: torch.LongTensor) -> Cache:
        """Beam search: reorder the KV cache and the interpreter's state together."""
        cache.reorder_cache(beam_idx)
        state = getattr(cache, "nc_state", None)
        if state is not None:
            cache.nc_state = state.select(beam_idx)
        return cache

    # ------------------------------------------------------------------ the interpreter
    def interpret(
        self, input_ids: torch.Tensor, hidden: torch.Tensor, state: Optional[InterpreterState] = None, record: Optional[dict] = None
    ) -> "Interpreted":
        """For the positions of ``input_ids`` (following those in ``state``, if any): the unnormalized library
        proposal for the next token [B, N, vocab], the gate [B, N], and the state including them. ``record``, if
        given, receives the chosen calls of every position (``explain``)."""
        heads, config = self.nc_heads, self.config
        if (config.nc_max_steps, config.nc_answer_window) != self._results_budget:  # the saved model's budget
            # differs from training's: calls that ran out of steps may now finish, so no cached result stays
            self._results, self._menus = {}, {}
            self._results_budget = (config.nc_max_steps, config.nc_answer_window)
        B, N = input_ids.shape
        W = config.nc_answer_window
        if state is None:
            ids, start = input_ids, 0
        else:
            ids, start = torch.cat([state.ids, input_ids], 1), state.ids.shape[1]
        T = ids.shape[1]
        if config.nc_call_reader == "hidden":
            calls, keywords = heads.call(hidden).float(), hidden.new_zeros(B, N, 0)  # [B, N, P] logits
        else:
            calls = heads.keyword_evidence(input_ids, state.keywords if state is not None else None,
                                           history=state.ids if state is not None else None)
            keywords = calls.detach()
        continuation = heads.continuation_logits(hidden, ids, start)  # [B, N]
        # A call's proposal weighs at most its probability times 1 - c, its own site's share wherever it is answered
        # (a position that continues an answer makes calls that hardly matter): that product is what
        # nc_min_call_probability is compared with.
        own_site = 1.0 - torch.sigmoid(continuation.detach())
        operand_keys = hidden.new_zeros(B, T, 0)  # only the pointer reader keys operands by hidden states
        if config.nc_operand_reader == "pointer":
            operand_keys = heads.operand_key(hidden)  # [B, N, d]: an operand is keyed by its last token
            if state is not None:
                operand_keys = torch.cat([state.operand_keys, operand_keys], 1)
            tokens, probs, skipped = self._pointer_calls(ids, start, calls, heads.operand_query(hidden), operand_keys,
                                                         record, own_site)
        else:
            tokens, probs, skipped = self._pointer_calls(ids, start, calls, None, None, record, own_site)
        if not self.training:
            # A position none of whose calls was worth running starts no answer: inside a long answer every separator
            # keeps a little new-site mass whose calls are too unlikely to run, and that mass, proposing nothing,
            # would drain the answer's site (to about half after 64 list items). Training runs every call.
            continuation = continuation.masked_fill(skipped.to(continuation.device), _CONTINUES)
        if heads.chat_markers:  # the chat template's markers and headers make no call
            probs = probs.masked_fill(heads.silent_positions(ids)[:, start:, None], 0.0)
        first_tokens, first_probs = tokens[..., 0], probs  # the first result token of each call made here
        if state is not None:
            tokens, probs = torch.cat([state.tokens, tokens], 1), torch.cat([state.probs, probs], 1)
        # Sites: position t answers the call made at t - j, j in [0, W), with token j of its result (j < T: a short
        # sequence needs no more of the window).
        offsets = torch.arange(min(W, T))
        sites = torch.arange(start, T).unsqueeze(1) - offsets  # [N, W]
        valid = sites >= 0
        sites = sites.clamp(min=0)
        last_sites = self._continued_sites(continuation, T, state)  # [B, N, T] over sites
        if not self.training:
            last_sites = self._end_answers(ids, start, last_sites, tokens, probs,
                                           state.last_sites if state is not None else None)
        site_probs = last_sites.gather(2, sites.expand(B, -1, -1)) * valid  # [B, N, W] over offsets
        at_site = tokens[:, sites, :, offsets.expand_as(sites)].permute(2, 0, 1, 3)  # [N, W, B, K] -> [B, N, W, K]
        # A call goes on answering only while the text after its site agrees with its result: a call whose first
        # tokens fall where the text says something else (inside the prompt, where nothing is scored) cannot be
        # continued into the answer, so every call pays for each token it proposes.
        agreed = self._agreement(ids, tokens)[:, sites, :, offsets.expand_as(sites)].permute(2, 0, 1, 3)
        weight = site_probs.unsqueeze(-1) * probs[:, sites] * (at_site >= 0) * agreed * valid.unsqueeze(-1)
        proposed = at_site.clamp(min=0).reshape(B, N, -1)
        weight = weight.reshape(B, N, -1)
        proposal = hidden.new_zeros(B, N, config.vocab_size, dtype=torch.float32).scatter_add(2, proposed, weight)
        gate_logits = heads.gate_logits(hidden)  # [B, N]
        own_gates = heads.gate_probability(gate_logits, self.heads_training.gate_learning_floor)
        gates = own_gates if state is None else torch.cat([state.gates, own_gates], 1)  # [B, T]
        if config.nc_gate_at == "site":  # the gate of the site each position answers
            gate = torch.einsum("bnt,bt->bn", last_sites, gates.float())
        else:
            gate = own_gates
        history = (*state.site_history, last_sites.detach()) if state is not None else (last_sites.detach(),)
        if state is not None:
            keywords = torch.cat([state.keyword_history, keywords], 1)
        new_state = InterpreterState(ids, operand_keys.detach(), tokens, probs.detach(), history, keywords, gates.detach())
        return Interpreted(proposal, proposed, weight.sum(-1), gate, new_state, first_tokens, first_probs, site_probs,
                           gate_logits, last_sites if config.nc_gate_at == "site" else None)

    def _agreement(self, ids: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """[B, T, K, W] whether the text after each site agrees with tokens 0 .. j - 1 of each of its calls' results
        (always at j = 0, and where the text does not reach yet); a bracket of a group the LM shares out agrees with
        any bracket of its group."""
        B, T, K, W = tokens.shape
        following = torch.nn.functional.pad(ids[:, 1:], (0, W), value=-2).unfold(1, W, 1)[:, :T]  # [B, T, W]
        same = self._canonical(tokens) == self._canonical(following).unsqueeze(2)
        same = same | (following == -2).unsqueeze(2)
        return torch.cat([same.new_ones(B, T, K, 1), same[..., :-1].cummin(-1).values], -1)

    def _canonical(self, tokens: torch.Tensor) -> torch.Tensor:
        for group in self._shared:
            members = torch.tensor(group, dtype=tokens.dtype, device=tokens.device)
            tokens = torch.where(torch.isin(tokens, members), members[0], tokens)
        return tokens

    def _end_answers(self, ids: torch.Tensor, start: int, last_sites: torch.Tensor, tokens: torch.Tensor,
                     probs: torch.Tensor, previous: Optional[torch.Tensor]) -> torch.Tensor:
        """An answer ends (at inference): where the text after the site that the position before answers holds the
        whole result of that site's likeliest call, so that the next token would be its end, the position goes on
        answering that site (and proposes the end) instead of starting a new call: no call starts at an answer's
        last token (" no" read as the site of factorial_tape(15) would append its digits to the answer). Later
        positions read as usual: what follows an answer's end is new text, a new question, or a prompt that goes
        on past tokens that happen to equal a call's result ("1+2=": the call at "+" reads 1 + 1). ``previous``
        [B, T']: the site distribution of the position before ``start`` (none at a sequence's start)."""
        B, N, T = last_sites.shape
        eos = self.config.eos_token_id
        eos = eos[0] if isinstance(eos, list) else eos
        if eos is None:
            return last_sites
        W = tokens.shape[-1]
        rows = ids.tolist()
        best = probs.argmax(-1).tolist()  # [B, T] each site's likeliest call (and way of writing it)
        out = last_sites.clone()
        for b in range(B):
            for n in range(N):
                t = start + n
                if n > 0:
                    before = out[b, n - 1]
                elif previous is not None:
                    before = torch.nn.functional.pad(previous[b], (0, T - previous.shape[1]))
                else:
                    continue
                s = int(before.argmax())
                o = t - s
                if not 0 < o < W:
                    continue
                result = tokens[b, s, best[b][s]].tolist()
                if result[o] == eos and rows[b][s + 1 : t + 1] == result[:o]:
                    out[b, n] = before
        return out

    @staticmethod
    def _continued_sites(continuation: torch.Tensor, T: int, state: Optional[InterpreterState]) -> torch.Tensor:
        """The call site each position answers, over sites [B, N, T]: with probability c_t the site of the previous
        position (the answer goes on, one offset further into the same result), otherwise the position itself (a
        new answer starts with the first token of the call made here),

            P[t] = c_t P[t - 1] + (1 - c_t) e_t,

        computed for all positions at once: P[t] = sum_t' exp(L[t] - L[t']) (1 - c_t') e_t' + exp(L[t]) P[start - 1],
        with L the cumulative sum of log c. No site is chosen by distance or content, so an answer stays on its call
        however far past the training lengths it runs."""
        B, N = continuation.shape
        start = T - N
        cont = torch.sigmoid(continuation)  # [B, N], from the continuation logits
        L = torch.cumsum(torch.log(cont.clamp_min(1e-30)), dim=1)  # [B, N]
        causal = torch.ones(N, N, dtype=torch.bool).tril()
        decay = torch.exp((L.unsqueeze(2) - L.unsqueeze(1)).masked_fill(~causal, float("-inf")))  # [B, N, N]
        out = cont.new_zeros(B, N, T)
        out[:, :, start:] = decay * (1.0 - cont).unsqueeze(1)
        if state is not None:
            carried = torch.nn.functional.pad(state.last_sites, (0, T - state.last_sites.shape[1]))
            out = out + torch.exp(L).unsqueeze(2) * carried.unsqueeze(1)
        return out

    def _pointer_calls(
        self, ids: torch.Tensor, start: int, calls: torch.Tensor, queries: Optional[torch.Tensor],
        operand_keys: Optional[torch.Tensor], record: Optional[dict], own_site: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Result tokens [B, N, K, W] and probabilities [B, N, K] of the top-k calls at positions ``start`` onward,
        operands chosen by pointer attention over the numbers and lists the reader found in each position's prefix
        (never after it: a position's call must not depend on what follows), programs by the call logits ``calls``
        [B, N, P] normalized over those that fit the operands. All positions are scored together. Without
        ``queries`` and ``operand_keys`` the pointers are the context reader's (one per program and slot). Third: [B, N]
        the positions that offered calls of which none was worth running (``nc_min_call_probability``)."""
        heads, config = self.nc_heads, self.config
        B, N, _ = calls.shape
        K, W, S = config.nc_top_k, config.nc_answer_window, heads.slots
        variants = self._variants
        silent = heads.silent_positions(ids).tolist() if heads.chat_markers else None
        site_b, site_n, site_operands, site_menu, menus, menu_index = [], [], [], [], [], {}
        for b in range(B):
            row = ids[b].tolist()
            menu = None
            for s in range(start, len(row)):
                if s == start or row[s] in self.reader.triggers:  # other tokens never change what the prefix holds
                    operands = self._operands(row[: s + 1])
                    menu = self._menu(operands)
                if menu is None or silent is not None and silent[b][s]:
                    continue
                if id(menu) not in menu_index:
                    menu_index[id(menu)] = len(menus)
                    menus.append(menu)
                site_b.append(b), site_n.append(s - start), site_operands.append(operands), site_menu.append(menu_index[id(menu)])
        tokens = torch.full((B, N, K * variants, W), -1, dtype=torch.long)
        probs = calls.new_zeros(B, N, K * variants)
        skipped = torch.zeros(B, N, dtype=torch.bool)
        if not site_b:
            return tokens, probs, skipped
        bi, ni, mi = torch.tensor(site_b), torch.tensor(site_n), torch.tensor(site_menu)
        width = max(map(len, site_operands))
        where = torch.tensor([[o.end - 1 for o in ops] + [-1] * (width - len(ops)) for ops in site_operands])  # [G, O]
        if len(menus) == 1:  # (the usual case while generating: one position, or positions seeing the same operands)
            programs, slots = menus[0].programs.expand(len(site_b), -1), menus[0].slots.expand(len(site_b), -1, -1)
            fits = menus[0].fits.expand(len(site_b), -1)
        else:
            programs = pad_sequence([m.programs for m in menus], batch_first=True)[mi]  # [G, C]
            slots = pad_sequence([m.slots for m in menus], batch_first=True, padding_value=-2)[mi]  # [G, C, S]
            fits = torch.stack([m.fits for m in menus])[mi]  # [G, P]
        if queries is not None:
            queries = queries.view(B, N, S, heads.dim)[bi, ni]  # [G, S, d]
            keys = operand_keys[bi.unsqueeze(1), where.clamp(min=0)]  # [G, O, d]
            logits = torch.einsum("gsd,god->gso", queries, keys).float().unsqueeze(1) / math.sqrt(heads.dim)  # [G, 1, S, O]
        else:
            logits = heads.context_logits(*self._operand_contexts(ids, start, site_b, site_n, site_operands, width))
            logits = logits[torch.arange(len(site_b)).unsqueeze(1), programs]  # [G, C, S, O]: each choice's program's
        pointer = torch.softmax(logits.masked_fill((where < 0)[:, None, None], float("-inf")), dim=-1)  # [G, 1 | C, S, O]
        p = torch.softmax(calls[bi, ni].masked_fill(~fits, float("-inf")), -1).gather(1, programs)  # [G, C]
        for slot in range(S):
            chosen = slots[:, :, slot]
            at = pointer[:, :, slot].expand(-1, chosen.shape[1], -1).gather(2, chosen.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            p = p * torch.where(chosen >= 0, at, (chosen == -1).to(p.dtype))
        top = p.detach().topk(min(K, p.shape[1]), dim=-1).indices  # [G, k]; padding combos have p = 0
        chosen_p = p.gather(1, top)
        worth = chosen_p.detach() if own_site is None else chosen_p.detach() * own_site[bi, ni].unsqueeze(1)
        run = (worth >= config.nc_min_call_probability).tolist()  # the calls whose proposal can weigh that much
        skipped[bi, ni] = torch.tensor([not any(go) for go in run])
        if config.nc_mode == "hard":
            self._fill_menus(menus, site_menu, top.tolist(), run)
            if len(menus) == 1:
                chosen_tokens = menus[0].tokens[top]  # [G, k, variants, W]
            else:
                table = pad_sequence([m.tokens for m in menus], batch_first=True, padding_value=-1)  # [E, C, variants, W]
                chosen_tokens = table[mi.unsqueeze(1), top]
        if config.nc_mode == "soft" or record is not None:
            picked = [[menus[e].choices[c] if c < len(menus[e].choices) else None for c in cs] for e, cs in zip(site_menu, top.tolist())]
        if config.nc_mode == "soft":
            chosen_tokens, factor = self._soft_results([[c.call if c and go else None for c, go in zip(row, ok)] for row, ok in zip(picked, run)])
            chosen_p = chosen_p * factor
        if record is not None:
            for g, row in enumerate(picked):
                operands = site_operands[g]
                record[(site_b[g], start + site_n[g])] = [
                    RecordedCall(c.call, [operands[i] for i in c.operands], float(chosen_p[g, k]), _real(chosen_tokens[g, k, 0]),
                                 c.problem or (None if run[g][k] else _UNLIKELY))
                    for k, c in enumerate(row) if c is not None
                ]
        k = top.shape[1]
        if variants == 2:  # each call with and without the space before its result, as the call site's token says
            lead = heads.lead_probability(ids[bi, start + ni]).unsqueeze(1)  # [G, 1]
            chosen_p = torch.stack([chosen_p * (1 - lead), chosen_p * lead], -1)  # [G, k, 2]
        tokens[bi, ni, : k * variants] = chosen_tokens.reshape(len(site_b), k * variants, W)
        chosen_p = chosen_p.reshape(len(site_b), k * variants)
        probs = probs.index_put((bi, ni), torch.cat([chosen_p, chosen_p.new_zeros(len(site_b), (K - k) * variants)], 1))
        return tokens, probs, skipped

    def _operand_contexts(self, ids: torch.Tensor, start: int, site_b: list, site_n: list, site_operands: list,
                          width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per site (G of them) and candidate operand (``width``, padded): the token before it, the token after it
        within the site's prefix (``vocab_size`` where there is none) and its rank from the latest candidate."""
        none = self.config.vocab_size
        rows = ids.tolist()
        before = torch.full((len(site_b), width), none, dtype=torch.long)
        after, rank = before.clone(), torch.zeros(len(site_b), width, dtype=torch.long)
        for g, (b, n, operands) in enumerate(zip(site_b, site_n, site_operands)):
            row, site = rows[b], start + n
            for i, o in enumerate(operands):
                before[g, i] = row[o.start - 1] if o.start > 0 else none
                after[g, i] = row[o.end] if o.end <= site else none
                rank[g, i] = len(operands) - 1 - i
        return before, after, rank

    def _operands(self, ids: list[int]) -> list[Operand]:
        """The operands a call may read: what the reader finds, a list's items read only as the list (a 64-item list
        offers one operand, not 65), the last ``nc_max_candidates`` of them (so the calls that fit stay few however
        many numbers came before, an answer's own numbers included)."""
        found = self.reader.read(ids)
        lists = [(o.start, o.end) for o in found if o.kind == "list"]
        found = [o for o in found if o.kind == "list" or not any(a <= o.start < b for a, b in lists)]
        return found[-self.config.nc_max_candidates:]

    @property
    def _variants(self) -> int:
        """How many ways each call's result is written: with and without the space before it (``nc_answer_lead``)."""
        return 2 if self.config.nc_answer_lead else 1

    def _menu(self, operands: list[Operand]) -> Optional["_Menu"]:
        """Every call that fits these operands, in tensor form (memoized by the operands' contents: consecutive
        positions mostly see the same operands), or None if there is none."""
        key = tuple((o.kind, o.items, o.style) for o in operands)
        if key not in self._menus:
            if len(self._menus) >= _MENU_CACHE_SIZE:
                self._menus.clear()
            choices = self._enumerate(operands)
            self._menus[key] = (_Menu(choices, self.nc_heads.slots, self.config.nc_answer_window, len(self.config.nc_programs),
                                      self._variants) if choices else None)
        return self._menus[key]

    def _enumerate(self, operands: list[Operand]) -> list["_Choice"]:
        """The calls whose parameters' kinds these operands have: an int or number (``tape``) parameter takes a
        number, a list or ``numbers`` parameter a list, and a number that is the only operand is also a one-item
        list ("sort: 55 ->"; among several numbers, one of them is not read as a list).
        A call of the right kinds that the machine cannot take (a value outside [0, V) for an int, operands that
        need more memory than the machine has) stays on the menu with its problem: it takes its share of the call
        head's probability and proposes nothing, so that its mass does not go to a call that fits but computes
        something else ("gcd(2000, 3000)=" on a machine of values below 1024 is not answered with gcd(3000, 3000))."""
        library, config = self.library, self.config
        alone = len(operands) == 1
        out = []
        for program_index, name in enumerate(config.nc_programs):
            program = library[name]
            if program.arity > config.nc_max_operands:
                continue
            fits_per_param = [[(i, value) for i, o in enumerate(operands)
                               if (value := _argument(kind, o, alone)) is not None] for _, kind in program.params]
            for picked in itertools.product(*fits_per_param):
                # a result is written the way its operands were (a list operand's way first)
                style = max((operands[i].style for i, _ in picked), key=lambda s: s.bracketed, default=Style())
                arguments = tuple(v for _, v in picked)
                problem = library.call_problem(name, _plain(arguments))
                out.append(_Choice(LibraryCall(program_index, arguments, style), tuple(i for i, _ in picked),
                                   None if problem is None else f"not run: {problem}"))
        return out

    def _fill_menus(self, menus: list["_Menu"], site_menu: list[int], top: list[list[int]], run: list[list[bool]]) -> None:
        """Execute the chosen calls (those ``run`` marks) whose results the menus do not hold yet."""
        missing = {}
        for e, chosen, go in zip(site_menu, top, run):
            menu = menus[e]
            for c, ok in zip(chosen, go):
                if ok and c < len(menu.choices) and not menu.done[c] and menu.choices[c].problem is None:
                    missing[(e, c)] = menu.choices[c].call
        if missing:
            for (e, c), variants in zip(missing, self._token_lists(list(missing.values()))):
                for v, tokens in enumerate(variants):
                    menus[e].tokens[c, v, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
                menus[e].done[c] = True

    def _token_lists(self, calls: list["LibraryCall"]) -> list[tuple[list[int], ...]]:
        """Result tokens (at most the answer window; one list per way of writing it) of hard calls: cached, the
        rest run as vectorized batches, one per step budget (``call_budget``)."""
        names = self.config.nc_programs
        todo = [call for call in dict.fromkeys(calls) if call not in self._results]
        if len(self._results) + len(todo) > _RESULT_CACHE_SIZE:  # full: start over (these calls all run again)
            self._results.clear()
            todo = list(dict.fromkeys(calls))
        by_budget: dict[int, list] = {}
        for call in todo:
            kinds = [kind for _, kind in self.library[names[call.program]].params]
            by_budget.setdefault(call_budget(kinds, call.arguments, self.config.nc_max_steps), []).append(call)
        for budget, group in by_budget.items():
            result = self.library.run_calls([(names[c.program], _plain(c.arguments)) for c in group], max_steps=budget)
            for call, value in zip(group, result.values):  # a failed call (value None) proposes nothing
                written = self._text_tokens(names[call.program], value, call.style)
                self._results[call] = tuple(tokens[: self.config.nc_answer_window] for tokens in written)
        return [self._results[call] for call in calls]

    def _hard_tokens(self, picked: list[list[Optional["LibraryCall"]]]) -> tuple[torch.Tensor, None]:
        """Result tokens [G, k, variants, W] of hard calls (none for None), and no probability factor."""
        flat = [call for row in picked for call in row]
        results = iter(self._token_lists([call for call in flat if call is not None]))
        empty = ((),) * self._variants
        rows = [next(results) if call is not None else empty for call in flat]
        W = self.config.nc_answer_window
        out = torch.stack([_token_tensor(list(variants), W) for variants in rows]) if rows else torch.full((0, self._variants, W), -1)
        return out.view(len(picked), -1, self._variants, W), None

    def _soft_results(self, picked: list[list[Optional["LibraryCall"]]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft execution of the chosen calls (each distinct call once, one batched soft run per program): the
        tokens of each call's most likely result [G, k, variants, W] and that result's probability [G, k] under the
        differentiable machine (its cells' probabilities times the probability of halting), through which gradients
        reach the program weights."""
        W, R, M = self.config.nc_answer_window, self.library.machine.num_registers, self.library.machine.memory_size
        by_program: dict[str, list] = {}
        for call in dict.fromkeys(call for row in picked for call in row if call is not None):
            by_program.setdefault(self.config.nc_programs[call.program], []).append(call)
        token_lists, probability = {}, {}
        for name, calls in by_program.items():
            program = self.library[name]
            args, memory = self.library.encode_soft(program, [_plain(c.arguments) for c in calls])
            entry = torch.zeros(len(calls), len(self.library))
            entry[:, self.library.machine.index[name]] = 1.0
            run = self.library.run_soft(entry, args, memory, max_steps=self.config.nc_max_steps)
            p_result, results = run.cells[:, R].max(-1)
            for i, call in enumerate(calls):
                value, p = int(results[i]), run.halted[i] * p_result[i]
                if program.returns != "int":  # the list the result points at, read at its most likely length
                    p_length, length = run.memory[i, min(value, M - 1)].max(-1)
                    if value + 1 + int(length) > M:
                        value, p = None, p * 0.0
                    else:
                        p_items, items = run.memory[i, value + 1 : value + 1 + int(length)].max(-1)
                        value, p = self.library.from_cells(program.returns, items.tolist()), p * p_length * p_items.prod()
                written = self._text_tokens(name, value, call.style)
                token_lists[call] = tuple(tokens[:W] for tokens in written)
                probability[call] = p
        flat = [call for row in picked for call in row]
        empty = ((),) * self._variants
        tokens = torch.stack([_token_tensor(list(token_lists[c] if c is not None else empty), W) for c in flat])
        factor = torch.stack([probability[c] if c is not None else torch.zeros(()) for c in flat])
        return tokens.view(len(picked), -1, self._variants, W), factor.view(len(picked), -1)

    def _text_tokens(self, name: str, value, style: Style) -> tuple[list[int], ...]:
        """The tokens of a result, then the end of text, as the tokenizer writes its text: without the space before
        it, and with it (``nc_answer_lead``). A failed call (None), or an int result of a program with result words
        that has no word, proposes nothing."""
        eos = self.config.eos_token_id
        eos = [eos[0] if isinstance(eos, list) else eos] if eos is not None else []
        eos = [token for token in eos if token < self.config.vocab_size]  # resize_token_embeddings may drop it
        if value is None:
            return ([],) * self._variants
        if name in self.config.nc_result_words:  # a word per value (the word carries its own space)
            words = self.config.nc_result_words[name]
            if not (isinstance(value, int) and 0 <= value < len(words)) or words[value] not in self.reader.token_of_text:
                return ([],) * self._variants
            spaced = words[value]
            # without the lead, the word without its space where the table has it ("no" beside " no": a chat answer
            # starts on a new line); else the word as given, either way
            bare = spaced.lstrip(" ") if spaced.lstrip(" ") in self.reader.token_of_text else spaced
            written = [self.reader.token_of_text[spaced]] + eos
            return (written,) if self._variants == 1 else ([self.reader.token_of_text[bare]] + eos, written)
        if isinstance(value, int):
            text = self.reader.value_text(value, style.decimal)
        else:
            text = self.reader.list_text(value, style)
        try:
            return tuple(self.reader.text_tokens(lead + text) + eos for lead in ("", " ")[: self._variants])
        except ValueError:  # a token it needs is not in the vocabulary (resize_token_embeddings removed it)
            return ([],) * self._variants


def _describe(operand: Operand) -> str:
    """An operand in a sentence: "a 12-digit number", "a list of 3 numbers"."""
    if operand.kind == "list":
        return f"a list of {len(operand.items)} number{'s' if len(operand.items) != 1 else ''}"
    digits = len(operand.items[0].lstrip("-"))
    return f"a {'negative ' if operand.items[0].startswith('-') else ''}{digits}-digit number"


def _argument(kind: str, operand: Operand, alone: bool):
    """What a parameter of ``kind`` receives from ``operand`` (an int or a number parameter a number, a list or
    numbers parameter a list, or the number when it is ``alone``, the only operand: a one-item list), or None if
    the operand is not of that kind. Whether the machine can hold it (an int parameter takes values in [0, V)) is
    ``Library.call_problem``'s to say."""
    if kind in ("int", "tape"):
        return operand.number if operand.kind == "number" else None
    if operand.kind == "list":
        return tuple(operand.values)
    return (operand.number,) if alone else None


@dataclass(frozen=True)
class LibraryCall:
    """A call the interpreter can make: a program (index in ``nc_programs``) on arguments (ints, and tuples of ints
    for lists); a result is written the way its operands were written."""

    program: int
    arguments: tuple
    style: Style


@dataclass(frozen=True)
class _Choice:
    call: LibraryCall
    operands: tuple[int, ...]  # per parameter: the index of the operand it reads
    problem: Optional[str] = None  # why the machine cannot take this call (it is then never run)


class _Menu:
    """The calls that fit one set of operands: programs [C], operand slots [C, S] (-1: unused slot) and the programs
    among all P that have a call here [P] for scoring, and the result tokens [C, variants, W] of those executed so
    far."""

    def __init__(self, choices: list[_Choice], slots: int, window: int, num_programs: int, variants: int = 1):
        self.choices = choices
        self.programs = torch.tensor([c.call.program for c in choices])
        self.fits = torch.zeros(num_programs, dtype=torch.bool).index_fill(0, self.programs, True)
        self.slots = torch.tensor([list(c.operands) + [-1] * (slots - len(c.operands)) for c in choices]).view(len(choices), slots)
        self.tokens = torch.full((len(choices), variants, window), -1, dtype=torch.long)
        self.done = [False] * len(choices)


@dataclass
class RecordedCall:
    """One of the top-k calls of a position, as ``explain`` reports it."""

    call: LibraryCall
    operands: list  # the Operand each parameter read
    probability: float
    tokens: list[int]
    problem: Optional[str] = None  # why it was not run, if the machine cannot take it


@dataclass
class Interpreted:
    """The interpreter's output for the positions of one forward pass."""

    proposal: torch.Tensor  # [B, N, vocab] unnormalized library proposal
    proposed_tokens: torch.Tensor  # [B, N, E] every token the proposal may hold (the others have 0)
    mass: torch.Tensor  # [B, N] the proposal's total
    gate: torch.Tensor  # [B, N]
    state: InterpreterState
    own_tokens: torch.Tensor  # [B, N, K] first result token of each call made at the position (-1: none)
    own_probs: torch.Tensor  # [B, N, K] those calls' probabilities
    site_probs: torch.Tensor  # [B, N, W] the site answered, by offset (0: the position itself)
    gate_logits: Optional[torch.Tensor] = None  # [B, N] each position's own gate logit
    sites: Optional[torch.Tensor] = None  # [B, N, T] the site each position answers (nc_gate_at="site"; else itself)


def _trainable(logits: torch.Tensor, sharpness: float) -> torch.Tensor:
    """Logits with their -inf entries raised to ``sharpness`` below the row's best (finite ones are kept, so that
    trained weights load unchanged)."""
    floor = logits.amax(-1, keepdim=True) - sharpness
    return torch.where(torch.isinf(logits), floor, logits).detach().clone()


def _shared_brackets(proposal: torch.Tensor, logits: torch.Tensor, shared: Sequence[torch.Tensor]) -> torch.Tensor:
    """The proposal with its mass on each group of tokens (closing brackets, opening ones) shared within the group as
    the LM's softmax does (no groups: unchanged)."""
    for group in shared:
        share = torch.softmax(logits[..., group], -1)
        proposal = proposal.index_copy(2, group, proposal[..., group].sum(-1, keepdim=True) * share)
    return proposal


def _plain(arguments: tuple) -> list:
    return [list(a) if isinstance(a, tuple) else a for a in arguments]


def _token_tensor(token_lists: list[list[int]], window: int) -> torch.Tensor:
    out = torch.full((len(token_lists), window), -1, dtype=torch.long)
    for i, tokens in enumerate(token_lists):
        out[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return out


def _real(tokens: torch.Tensor) -> list[int]:
    return [t for t in tokens.tolist() if t >= 0]


# generate() inspects the forward signature of a remote-code model at every step: give it the answer at once.
NCLlamaForCausalLM.forward.__signature__ = inspect.signature(NCLlamaForCausalLM.forward)

# save_pretrained writes these files and the auto_map into the folder, so that the Auto classes load it with
# trust_remote_code=True wherever it goes (a local folder, the Hub).
NCLlamaConfig.register_for_auto_class()
NCLlamaModel.register_for_auto_class("AutoModel")
NCLlamaForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["NCLlamaForCausalLM", "NCLlamaModel", "NCLlamaPreTrainedModel", "NCInterpreterHeads"]
