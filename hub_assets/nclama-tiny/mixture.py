"""The mixture of the language model and the library: the next-token distribution

    p = (1 - g m) p_LM + g p_lib    (with 1 - g m at least LM_FLOOR),

computed in log space from the LM's logits and the interpreter's proposal (``fuse``), and the heads' own training
terms (``learning_floor_loss``, ``gate_target_loss``; ``heads.HeadsTraining`` weighs them)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional, Sequence, Union

import torch

if TYPE_CHECKING:
    from .modeling_nclama import Interpreted

LM_FLOOR = 1e-6  # the least mass the language model keeps in the output mixture


def fuse(logits: torch.Tensor, interpreted: "Interpreted", shared: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """LM logits -> log of the gated mixture with the library's proposal, up to the LM's log-normalizer (so that
    a closed gate returns the LM logits themselves):

        log((1 - g m) softmax(l) + g q) + logsumexp(l) = logaddexp(l + log(1 - g m), log(g q) + logsumexp(l)),

    which is ``l + log(1 - g m)`` wherever the proposal ``q`` is 0: only the tokens the library proposes (a few
    per position) need the full formula, so the vocabulary-wide work is one shift and one scatter. ``shared``:
    groups of token ids (a list's closing tokens, its opening ones) whose proposed mass is shared within each
    group as the LM's softmax does."""
    logits32 = logits.float()
    gate, tokens = interpreted.gate, interpreted.proposed_tokens
    proposal = shared_brackets(interpreted.proposal, logits32, shared)
    if shared:
        tokens = torch.cat([tokens, *(group.expand(*tokens.shape[:-1], -1) for group in shared)], -1)
    # The language model keeps at least LM_FLOOR of the mass (and the library's mass may exceed 1 by rounding):
    # every token keeps a finite log-probability and gradient, even under a fully open gate.
    lm_weight = torch.log1p(-(gate * interpreted.mass).clamp(max=1.0 - LM_FLOOR)).unsqueeze(-1)
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


def proposed_answer(lm_logits: torch.Tensor, interpreted: "Interpreted", shared: Sequence[torch.Tensor],
                     labels: torch.Tensor) -> torch.Tensor:
    """[B, N - 1] the library proposal's probability ``q(y)`` of each next token ``y`` (``labels`` shifted; a
    shared bracket's mass split as the LM prefers), with its gradient: what the heads' own training terms read."""
    index = labels[:, 1:].clamp(min=0).unsqueeze(-1)  # position t predicts token t + 1
    proposal = shared_brackets(interpreted.proposal[:, :-1], lm_logits[:, :-1].detach().float(), shared)
    return proposal.gather(2, index).squeeze(-1)


def learning_floor_loss(q: torch.Tensor, interpreted: "Interpreted", labels: torch.Tensor, floor: float,
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


def gate_target_loss(q: torch.Tensor, lm_logits: torch.Tensor, interpreted: "Interpreted",
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


def shared_brackets(proposal: torch.Tensor, logits: torch.Tensor, shared: Sequence[torch.Tensor]) -> torch.Tensor:
    """The proposal with its mass on each group of tokens (closing brackets, opening ones) shared within the group as
    the LM's softmax does (no groups: unchanged)."""
    for group in shared:
        share = torch.softmax(logits[..., group], -1)
        proposal = proposal.index_copy(2, group, proposal[..., group].sum(-1, keepdim=True) * share)
    return proposal
