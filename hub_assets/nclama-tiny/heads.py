"""The interpreter heads: what NCLlama learns beside LLaMA's weights. Each head reads the decoder's hidden state or
a token table and scores one decision: the gate (answer from the library or not), the call (which program), the
operands (pointer attention or the context reader), whether a position continues the answer before it, and the lead
(a result written with the space before it). ``HeadsTraining`` says how they learn beside the likelihood
(training only, never saved)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from .configuration_nclama import NCLlamaConfig
from .reader import OperandReader

if TYPE_CHECKING:
    from .modeling_nclama import Interpreted

CONTINUES = 1e4  # a continuation logit whose sigmoid is 1.0 in float32: the position is never a call site


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
        return self._read_continuation(hidden, ids, start).masked_fill(signs, CONTINUES)

    def _read_continuation(self, hidden: torch.Tensor, ids: torch.Tensor, start: int) -> torch.Tensor:
        if hasattr(self, "site_continue"):
            return self.site_continue(hidden).float().squeeze(-1)
        vocab = self.site_token.num_embeddings - 1
        before_first = self.bos_token_id if self.bos_token_id is not None and self.bos_token_id < vocab else 0
        previous = torch.nn.functional.pad(ids, (1, 0), value=before_first)[:, start:-1]
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
