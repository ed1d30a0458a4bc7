"""Heads set by hand so that a test knows which call the model makes (tests stand in for training)."""
import torch
from torch import nn


class ForcedSites(nn.Module):
    """A site-continuation head under which every position after ``site`` answers the call made at ``site``: a new
    site at ``site`` and before it, continue after it."""

    def __init__(self, site: int):
        super().__init__()
        self.site, self.seen = site, 0

    def forward(self, hidden):  # called on the prompt, then (with a KV cache) on one new position at a time
        if hidden.shape[1] > 1:
            self.seen = 0
        positions = torch.arange(self.seen, self.seen + hidden.shape[1])
        self.seen += hidden.shape[1]
        logits = torch.where(positions > self.site, 30.0, -30.0)
        return logits.view(1, -1, 1).expand(*hidden.shape[:-1], 1)


def force(model, program: str, site: int):
    """Open the gate, call ``program`` at every position, and answer the call made at ``site``."""
    heads = model.nc_heads
    with torch.no_grad():
        heads.gate_scale.fill_(1.0)
        heads.gate.weight.zero_(), heads.gate.bias.fill_(30.0)
        call = model.config.nc_programs.index(program)
        if model.config.nc_call_reader == "hidden":
            heads.call.weight.zero_(), heads.call.bias.fill_(-30.0)
            heads.call.bias[call] = 30.0
        else:  # every token is evidence for the program
            heads.call_keywords.weight.fill_(-30.0)
            heads.call_keywords.weight[:, call] = 30.0
    heads.site_continue = ForcedSites(site)
