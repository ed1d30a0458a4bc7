"""The interpreter heads: what NCLlama learns beside LLaMA's weights. Each head reads the decoder's hidden state or
a token table and scores one decision: the gate (answer from the library or not), the call (which program), the
operands, whether a position continues the answer before it, and the lead (a result written with the space before
it). The call, operand, site and gate heads come in variants, each a module chosen by name from a registry
(``CALL_READERS``, ``OPERAND_READERS``, ``SITE_READERS``, ``GATE_READERS``; where the gate is read:
``GATE_PLACES``), as transformers picks an attention implementation; the configuration's defaults are the shipped
model's. ``HeadsTraining`` says how they learn beside the likelihood (training only, never saved)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import torch
from torch import nn

from .configuration_nclama import NCLlamaConfig
from .reader import OperandReader

if TYPE_CHECKING:
    from .modeling_nclama import Interpreted, InterpreterState

CONTINUES = 1e4  # a continuation logit whose sigmoid is 1.0 in float32: the position is never a call site
# The words gate's bias at initialization: a sentence asks nothing (sigmoid 0.018) until one of its words learns to
# say so; at 0 the questions, 19 in 20 training examples, raised the bias itself and every unknown sentence asked.
WORDS_GATE_PRIOR = -4.0


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


def _resized(table: nn.Embedding, vocab_size: int, extra: int = 0) -> nn.Embedding:
    """``table`` for ``vocab_size`` tokens (plus ``extra`` last rows that stand for no token): the rows of the tokens
    that remain are kept, new tokens get zero rows (no evidence either way), the extra rows stay last."""
    rows = table.num_embeddings - extra
    out = nn.Embedding(vocab_size + extra, table.embedding_dim, device=table.weight.device, dtype=table.weight.dtype)
    with torch.no_grad():
        out.weight.zero_()
        kept = min(rows, vocab_size)
        out.weight[:kept] = table.weight[:kept]
        if extra:
            out.weight[-extra:] = table.weight[-extra:]
    out.weight.requires_grad_(table.weight.requires_grad)
    return out


def _kept(tokens: list[int], vocab_size: int) -> list[int]:
    return [t for t in tokens if t < vocab_size]


class Sentences:
    """Where sentences start and end, and which positions are the chat template's (no learned parameters): a call
    reads the words of its own sentence, and the template's markers and headers make no call."""

    def __init__(self, config: NCLlamaConfig):
        reader = OperandReader(config.nc_reader_tokens, config.nc_decimal_places)
        self.bos_token_id = config.bos_token_id
        self.ends = sorted(reader.sentence_ends)  # "?", "].", ".": a question or a sentence ends there
        # minus tokens ("-", " -", "[-"): a sign is the first token of the number it writes, so no answer starts at
        # one (else an answer "-76867" could be the LM's "-" followed by a call for 76867 with its operands reversed)
        self.signs = sorted(reader.signs)
        # what writes numbers and lists (digits, signs, brackets, separators, spaces, points) and the sequence's start:
        # in every question and every statement alike, so no word of either
        self.number_tokens = sorted({*reader.digits, *reader.signs, *reader.openers, *reader.closers,
                                     *reader.empty_lists, *reader.separators, *reader.spaces, *reader.points,
                                     *([config.bos_token_id] if config.bos_token_id is not None else [])})
        # the chat template's own tokens (nc_chat_tokens): no words, sentence ends or call sites, except that a break
        # ("\n" after "<|im_start|>assistant") is where the assistant's answer is called
        chat = {int(token): role for token, role in config.nc_chat_tokens.items()}
        self.chat_tokens = sorted(chat)
        self.chat_markers = sorted(token for token, role in chat.items() if role == "marker")
        self.chat_breaks = sorted(token for token, role in chat.items() if role == "break")

    def resize(self, vocab_size: int) -> None:
        for name in ("ends", "signs", "number_tokens", "chat_tokens", "chat_markers", "chat_breaks"):
            setattr(self, name, _kept(getattr(self, name), vocab_size))

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

    def words(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, T] whether each token of ``ids`` is a word: not what writes a number or a list, not the sequence's
        start, not the chat template's."""
        numbers = torch.isin(ids, torch.tensor(self.number_tokens, dtype=torch.long, device=ids.device))
        return ~numbers & ~self.template_positions(ids)

    def silent_positions(self, ids: torch.Tensor) -> Optional[torch.Tensor]:
        """[B, T] the positions that make no call: the chat template's markers and headers (a break, the "\n" that
        opens a turn's content, may: the assistant's answer is called there). None without a template."""
        if not self.chat_markers:
            return None
        breaks = torch.tensor(self.chat_breaks, dtype=torch.long, device=ids.device)
        return self.template_positions(ids) & ~torch.isin(ids, breaks)

    def __call__(self, ids: torch.Tensor, after_end: Optional[torch.Tensor] = None,
                 history: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, N] the index of the sentence each position of ``ids`` is in, and [B, N] whether it is the template's.
        A new sentence starts at a beginning-of-sequence token, after a token that ends a sentence and after the
        chat template (``after_end`` [B]: the token before ``ids`` ended one; ``history`` [B, S]: the tokens before
        ``ids``, read instead). The template's positions start and end none: they stay in the sentence before them,
        so that the assistant's turn reads the user's question."""
        full = ids if history is None else torch.cat([history, ids], 1)
        template = self.template_positions(full)
        ends = torch.isin(full, torch.tensor(self.ends, dtype=torch.long, device=ids.device)) & ~template
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


def sentence_max(scores: torch.Tensor, sentences: Sentences, ids: torch.Tensor, carried: Optional[torch.Tensor] = None,
                 after_end: Optional[torch.Tensor] = None, history: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per position of ``ids`` [B, N] and column of ``scores`` [B, N, C] (each token's own), the best score of the
    tokens of its sentence so far [B, N, C] (``carried`` [B, C]: that of the position before ``ids``, whose sentence
    ended if ``after_end``; ``history``: the tokens before ``ids``, from which that is read instead). A running max
    restarted at each sentence: a later segment's scores are lifted above every earlier one's before the cumulative
    max, which then never reaches back past its segment. The chat template's tokens are no words: they score 0 and
    sort below every word of their sentence, so they carry the evidence of the words before them. The max's own
    gradient would reach one token per column and position, so that a word learns only once it already wins; in
    training the gradient is instead that of the softmax-weighted mean of the segment's scores (the value stays the
    max): every token of the sentence learns at once, the likeliest winners most."""
    segment, template = sentences(ids, after_end, history)
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
        mean = (weights * scores.unsqueeze(1)).sum(2)  # [B, N, C]
        best = best.detach() + (mean - mean.detach())
    return best[:, 1:] if carried is not None else best


def sentence_cumsum(values: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
    """[B, N, C] the sum of ``values`` [B, N, C] over each position's sentence so far (``segment`` [B, N]: the index
    of the sentence each position is in, as ``Sentences`` numbers them)."""
    totals = values.cumsum(1)
    starts = torch.ones_like(segment, dtype=torch.bool)
    starts[:, 1:] = segment[:, 1:] != segment[:, :-1]
    index = torch.arange(segment.shape[1], device=segment.device).expand_as(segment)
    first = torch.where(starts, index, 0).cummax(1).values  # the first position of each one's sentence here
    return totals - (totals - values).gather(1, first.unsqueeze(-1).expand_as(values))


class HeadReader(nn.Module):
    """A registered head variant. One that reads hidden states only has no token tables to follow a resized
    vocabulary; those with token tables override ``resize_token_tables``."""

    def resize_token_tables(self, vocab_size: int) -> None:
        return None


# ---------------------------------------------------------------------------------------------- the call head
class HiddenCallReader(HeadReader):
    """``"hidden"`` (the paper's): the call's logits are a linear map of the position's hidden state. Reads what the
    question means; drifts where operands are longer than in training."""

    def __init__(self, config: NCLlamaConfig, sentences: Sentences):
        super().__init__()
        self.scores = nn.Linear(config.hidden_size, max(1, len(config.nc_programs)))

    def forward(self, input_ids: torch.Tensor, hidden: torch.Tensor, state: Optional["InterpreterState"]):
        """[B, N, P] call logits of the positions of ``input_ids``, and [B, N, 0]: nothing to carry."""
        return self.scores(hidden).float(), hidden.new_zeros(*input_ids.shape, 0)


class KeywordCallReader(HeadReader):
    """``"keywords"``: a learned score per (token, program), max-pooled over the tokens of the position's sentence
    so far: the call depends on which words the prompt holds, not on how far apart they are or how many digits
    surround them, so it is the same at any operand length."""

    def __init__(self, config: NCLlamaConfig, sentences: Sentences):
        super().__init__()
        self.keywords = nn.Embedding(config.vocab_size, max(1, len(config.nc_programs)))
        self.sentences = sentences

    def forward(self, input_ids: torch.Tensor, hidden: torch.Tensor, state: Optional["InterpreterState"]):
        """[B, N, P] call logits of the positions of ``input_ids``, and the same evidence, detached, to carry in the
        interpreter's state to the next positions."""
        evidence = self.evidence(input_ids, state.keywords if state is not None else None,
                                 history=state.ids if state is not None else None)
        return evidence, evidence.detach()

    def evidence(self, ids: torch.Tensor, carried: Optional[torch.Tensor] = None,
                 after_end: Optional[torch.Tensor] = None, history: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per position of ``ids`` [B, N] and program, the best score of the tokens of its sentence so far [B, N, P]
        (``sentence_max``)."""
        return sentence_max(self.keywords(ids).float(), self.sentences, ids, carried, after_end, history)

    def resize_token_tables(self, vocab_size: int) -> None:
        self.keywords = _resized(self.keywords, vocab_size)


class SentenceCallReader(HeadReader):
    """``"sentence"``: the mean of the hidden states (layer-normalized, layer ``nc_call_layer``) of the words of the
    position's sentence so far (``Sentences.words``: not the digits and list punctuation), through a linear map. A
    pretrained LM's middle layers say what a sentence's words mean: a wording the training never showed ("Put [...]
    in increasing order.") lands near the trained ones, and however long the list, the mean is of the words, where
    one state at the call site is mostly about the list."""

    def __init__(self, config: NCLlamaConfig, sentences: Sentences):
        super().__init__()
        self.scores = nn.Linear(config.hidden_size, max(1, len(config.nc_programs)))
        self.sentences = sentences

    def forward(self, input_ids: torch.Tensor, hidden: torch.Tensor, state: Optional["InterpreterState"]):
        """The call logits [B, N, P] of the positions of ``input_ids`` (``hidden``: their states at
        ``nc_call_layer``), and, to carry in the interpreter's state, each position's sum of its sentence's word
        states and their count [B, N, d + 1]."""
        history = state.ids if state is not None else None
        full = input_ids if history is None else torch.cat([history, input_ids], 1)
        words = self.sentences.words(full)[:, full.shape[1] - input_ids.shape[1]:].unsqueeze(-1).float()
        states = nn.functional.layer_norm(hidden.float(), hidden.shape[-1:])
        values = torch.cat([states * words, words], -1)  # [B, N, d + 1]
        segment, _ = self.sentences(input_ids, None, history)
        sums = sentence_cumsum(values, segment)
        if state is not None and history.shape[1]:  # the sentence of the token before goes on
            sums = sums + (segment == 0).unsqueeze(-1) * state.keywords.unsqueeze(1).float()
        mean = sums[..., :-1] / sums[..., -1:].clamp(min=1.0)
        return self.scores(mean), sums.detach()


# ------------------------------------------------------------------------------------------- the operand head
@dataclass
class OperandSites:
    """The positions (G of them) whose calls choose operands, and what each may read."""

    ids: torch.Tensor  # [B, T] every token so far
    start: int  # the first position of this forward pass
    keys: torch.Tensor  # [B, T, d] each position's operand key (the pointer reader's; d = 0 otherwise)
    queries: torch.Tensor  # [B, N, ...] this pass's hidden states (the pointer reader's queries come from them)
    b: torch.Tensor  # [G] row of each site
    n: torch.Tensor  # [G] its position in this pass
    operands: list  # per site, the candidate operands (``reader.Operand``) before it
    where: torch.Tensor  # [G, O] each candidate's last token (-1: padding)
    programs: torch.Tensor  # [G, C] each choice's program


class PointerOperandReader(HeadReader):
    """``"pointer"`` (the paper's): each slot's operand is chosen by attention from the position's hidden state to
    the candidates' last tokens. Reads meaning; drifts where operands are longer than in training."""

    def __init__(self, config: NCLlamaConfig, sentences: Sentences):
        super().__init__()
        self.slots, self.dim = config.nc_max_operands, config.nc_pointer_dim
        self.query = nn.Linear(config.hidden_size, self.slots * self.dim)
        self.key = nn.Linear(config.hidden_size, self.dim)

    def keys(self, hidden: torch.Tensor, state: Optional["InterpreterState"]) -> torch.Tensor:
        """[B, T, d] the key of every position so far (an operand is keyed by its last token)."""
        keys = self.key(hidden)
        return keys if state is None else torch.cat([state.operand_keys, keys], 1)

    def forward(self, sites: OperandSites) -> torch.Tensor:
        """[G, 1, S, O] each slot's logits over the candidates (the same for every program)."""
        B, N = sites.queries.shape[:2]
        queries = self.query(sites.queries).view(B, N, self.slots, self.dim)[sites.b, sites.n]  # [G, S, d]
        keys = sites.keys[sites.b.unsqueeze(1), sites.where.clamp(min=0)]  # [G, O, d]
        return torch.einsum("gsd,god->gso", queries, keys).float().unsqueeze(1) / math.sqrt(self.dim)


class ContextOperandReader(HeadReader):
    """``"context"``: per program and slot, a learned score for the token before each candidate, one for the token
    after it (or for none yet) and one for its rank from the latest candidate. "Subtract B from A." gives the first
    slot of ``long_sub`` the number after " from" whatever its length: the operands' order holds far past the
    training lengths. The last row of the token tables stands for no token."""

    def __init__(self, config: NCLlamaConfig, sentences: Sentences):
        super().__init__()
        programs = max(1, len(config.nc_programs))
        self.slots = config.nc_max_operands
        self.before = nn.Embedding(config.vocab_size + 1, programs * self.slots)
        self.after = nn.Embedding(config.vocab_size + 1, programs * self.slots)
        self.rank = nn.Embedding(config.nc_max_candidates, programs * self.slots)

    def keys(self, hidden: torch.Tensor, state: Optional["InterpreterState"]) -> torch.Tensor:
        return hidden.new_zeros(hidden.shape[0], hidden.shape[1] + (state.length if state is not None else 0), 0)

    def forward(self, sites: OperandSites) -> torch.Tensor:
        """[G, C, S, O] each choice's program's slot logits over the candidates."""
        before, after, rank = self.contexts(sites)
        scores = self.before(before) + self.after(after) + self.rank(rank)  # [G, O, P * S]
        logits = scores.float().view(*before.shape, -1, self.slots).permute(0, 2, 3, 1)  # [G, P, S, O]
        return logits[torch.arange(len(sites.operands)).unsqueeze(1), sites.programs]

    def contexts(self, sites: OperandSites) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per site and candidate (padded to O): the token before it, the token after it within the site's prefix
        (the no-token row where there is none) and its rank from the latest candidate."""
        none = self.before.num_embeddings - 1
        rows, width = sites.ids.tolist(), sites.where.shape[1]
        before = torch.full((len(sites.operands), width), none, dtype=torch.long)
        after, rank = before.clone(), torch.zeros(len(sites.operands), width, dtype=torch.long)
        for g, (b, n, operands) in enumerate(zip(sites.b.tolist(), sites.n.tolist(), sites.operands)):
            row, site = rows[b], sites.start + n
            for i, o in enumerate(operands):
                before[g, i] = row[o.start - 1] if o.start > 0 else none
                after[g, i] = row[o.end] if o.end <= site else none
                rank[g, i] = len(operands) - 1 - i
        return before, after, rank

    def resize_token_tables(self, vocab_size: int) -> None:
        self.before, self.after = _resized(self.before, vocab_size, 1), _resized(self.after, vocab_size, 1)


# ---------------------------------------------------------------------------------------------- the site head
class HiddenSiteReader(HeadReader):
    """``"hidden"``: whether a position continues the answer before it is a linear map of its hidden state."""

    def __init__(self, config: NCLlamaConfig, sentences: Sentences):
        super().__init__()
        self.scores = nn.Linear(config.hidden_size, 1)

    def forward(self, hidden: torch.Tensor, ids: torch.Tensor, start: int) -> torch.Tensor:
        return self.scores(hidden).float().squeeze(-1)


class TokenSiteReader(HeadReader):
    """``"tokens"``: the position's token and the token before it alone decide (a learned score for each token as
    the current one and as the previous one; every digit token reads one shared last row): a separator after a digit
    continues a list, the space after "?" starts an answer, wherever they stand, so that answers far longer than the
    training ones stay on their call."""

    def __init__(self, config: NCLlamaConfig, sentences: Sentences):
        super().__init__()
        self.token = nn.Embedding(config.vocab_size + 1, 1)  # the position's own token
        self.previous = nn.Embedding(config.vocab_size + 1, 1)  # the token before it
        self.bos_token_id = config.bos_token_id
        self.digit_tokens = sorted(int(t) for t, text in config.nc_reader_tokens.items() if text.isascii() and text.isdigit())

    def forward(self, hidden: torch.Tensor, ids: torch.Tensor, start: int) -> torch.Tensor:
        vocab = self.token.num_embeddings - 1
        before_first = self.bos_token_id if self.bos_token_id is not None and self.bos_token_id < vocab else 0
        previous = torch.nn.functional.pad(ids, (1, 0), value=before_first)[:, start:-1]
        digits = torch.tensor(self.digit_tokens, dtype=torch.long, device=ids.device)
        classes = torch.arange(vocab, device=ids.device).index_fill(0, digits, vocab)  # a digit token -> the last row
        return (self.token(classes[ids[:, start:]]) + self.previous(classes[previous])).float().squeeze(-1)

    def resize_token_tables(self, vocab_size: int) -> None:
        self.token, self.previous = _resized(self.token, vocab_size, 1), _resized(self.previous, vocab_size, 1)
        self.digit_tokens = _kept(self.digit_tokens, vocab_size)


# ---------------------------------------------------------------------------------------------- the gate head
class HiddenGateReader(HeadReader):
    """``"hidden"`` (the paper's): the gate's logit is the linear map of the hidden state alone."""

    def __init__(self, config: NCLlamaConfig, sentences: Sentences):
        super().__init__()

    def forward(self, hidden_logits: torch.Tensor, ids: torch.Tensor, start: int) -> torch.Tensor:
        return hidden_logits


class WordsGateReader(HeadReader):
    """``"words"``: the gate opens where the hidden state says so *and* the words of the position's sentence ask for
    an answer: the mean of a learned score per word (``Sentences.words``: digits, list punctuation and the
    sequence's start, which every sentence has, are no words) over the sentence so far, plus a bias that starts
    closed (``WORDS_GATE_PRIOR``). A word the training never showed scores 0, so a sentence of unknown words stays
    near the bias, whatever a small LM's hidden state makes of it ("The winning numbers were 28, 33, 25 and 33." is
    no question), and the words that ask ("What", "Sort", "=", "+") learn to open it. A mean, not a max: the words
    that questions and statements share (" the", " and", " of") would each open a max, as the questions, most of the
    training, teach them to. The logit returned is that of the product of the two probabilities."""

    def __init__(self, config: NCLlamaConfig, sentences: Sentences):
        super().__init__()
        self.words = nn.Embedding(config.vocab_size, 1)  # zero at init (_init_weights)
        self.bias = nn.Parameter(torch.full((), WORDS_GATE_PRIOR))
        self.sentences = sentences

    def asks(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """[B, N] logit that the sentence of each position of ``ids[:, start:]`` asks for an answer."""
        words = self.sentences.words(ids).unsqueeze(-1).float()
        segment, _ = self.sentences(ids)
        sums = sentence_cumsum(torch.cat([self.words(ids).float() * words, words], -1), segment)
        return self.bias + (sums[..., 0] / sums[..., 1].clamp(min=1.0))[:, start:]

    def forward(self, hidden_logits: torch.Tensor, ids: torch.Tensor, start: int) -> torch.Tensor:
        log_open = nn.functional.logsigmoid(hidden_logits) + nn.functional.logsigmoid(self.asks(ids, start))
        log_open = log_open.clamp(max=-1e-7)  # the logit of a probability that rounds to 1 is finite
        return log_open - torch.log(-torch.expm1(log_open))

    def resize_token_tables(self, vocab_size: int) -> None:
        self.words = _resized(self.words, vocab_size)


# ------------------------------------------------------------------------------------- where the gate is read
def gate_at_position(own_gates: torch.Tensor, gates: torch.Tensor, sites: torch.Tensor):
    """``"position"``: each position's own gate. Returns the gate [B, N] and None (no site read)."""
    return own_gates, None


def gate_at_site(own_gates: torch.Tensor, gates: torch.Tensor, sites: torch.Tensor):
    """``"site"``: the gate of the call site a position answers (each site's gate weighted by the probability that
    the position answers it), so that the decision to answer from the library is taken once, where the call is made,
    and holds for the whole answer. Returns the gate [B, N] and the sites [B, N, T] it was read from."""
    return torch.einsum("bnt,bt->bn", sites, gates.float()), sites


CALL_READERS: dict[str, type[nn.Module]] = {"hidden": HiddenCallReader, "keywords": KeywordCallReader,
                                             "sentence": SentenceCallReader}
OPERAND_READERS: dict[str, type[nn.Module]] = {"pointer": PointerOperandReader, "context": ContextOperandReader}
SITE_READERS: dict[str, type[nn.Module]] = {"hidden": HiddenSiteReader, "tokens": TokenSiteReader}
GATE_READERS: dict[str, type[nn.Module]] = {"hidden": HiddenGateReader, "words": WordsGateReader}
GATE_PLACES: dict[str, Callable] = {"position": gate_at_position, "site": gate_at_site}


class NCInterpreterHeads(nn.Module):
    """The gate, the call reader (``nc_call_reader``), the operand reader (``nc_operand_reader``), the site reader
    (``nc_site_reader``), and the optional lead and residual injection of the library's proposal."""

    def __init__(self, config: NCLlamaConfig):
        super().__init__()
        self.sentences = Sentences(config)
        self.gate = nn.Linear(config.hidden_size, 1)
        self.gate_scale = nn.Parameter(torch.zeros(()))  # 0: closed, the model is exactly the base LLaMA
        self.gate_reader = GATE_READERS[config.nc_gate_reader](config, self.sentences)
        self.place_gate = GATE_PLACES[config.nc_gate_at]
        self.call = CALL_READERS[config.nc_call_reader](config, self.sentences)
        self.operands = OPERAND_READERS[config.nc_operand_reader](config, self.sentences)
        self.sites = SITE_READERS[config.nc_site_reader](config, self.sentences)
        if config.nc_residual_injection:
            self.inject = nn.Linear(config.hidden_size, config.hidden_size, bias=False)  # zero at init: no change
        if config.nc_answer_lead:  # per call-site token: the result is written with the space before it
            self.answer_lead = nn.Embedding(config.vocab_size, 1)  # zero at init: either way alike

    def resize_token_tables(self, vocab_size: int) -> None:
        """Follow the model's vocabulary to ``vocab_size`` tokens: the tables indexed by token id keep the rows of
        the tokens that remain and new tokens get zero rows; the token lists forget the tokens that are gone."""
        for reader in (self.call, self.operands, self.sites, self.gate_reader):
            reader.resize_token_tables(vocab_size)
        if hasattr(self, "answer_lead"):
            self.answer_lead = _resized(self.answer_lead, vocab_size)
        self.sentences.resize(vocab_size)

    def lead_probability(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, N] probability that a call made at each position of ``ids`` writes its result with the space before
        it (``nc_answer_lead``)."""
        return torch.sigmoid(self.answer_lead(ids).float().squeeze(-1))

    def gate_logits(self, hidden: torch.Tensor, ids: torch.Tensor, start: int) -> torch.Tensor:
        """[B, N] logit of each new position's own gate opening (before the scale; ``ids``: every token so far, the
        new ones from ``start``), as the gate reader (``nc_gate_reader``) reads it."""
        return self.gate_reader(self.gate(hidden).float().squeeze(-1), ids, start)

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

    def continuation_logits(self, hidden: torch.Tensor, ids: torch.Tensor, start: int) -> torch.Tensor:
        """[B, N] logit that each new position (``ids[:, start:]``, hidden states ``hidden``) continues the answer of
        the position before it (the site reader's); a minus sign always continues."""
        signs = torch.isin(ids[:, start:], torch.tensor(self.sentences.signs, dtype=torch.long, device=ids.device))
        return self.sites(hidden, ids, start).masked_fill(signs, CONTINUES)

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
