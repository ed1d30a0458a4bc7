"""Heads set by hand so that a test knows which call the model makes (tests stand in for training)."""
import torch
from torch import nn


class ForcedSites(nn.Module):
    """Site keys that make every position after ``site`` point at ``site`` (a test stands in for training)."""

    def __init__(self, site: int, dim: int):
        super().__init__()
        self.site, self.dim, self.seen = site, dim, 0

    def forward(self, hidden):  # called on the prompt, then (with a KV cache) on one new position at a time
        if hidden.shape[1] > 1:
            self.seen = 0
        keys = torch.zeros(*hidden.shape[:-1], self.dim)
        if 0 <= self.site - self.seen < hidden.shape[1]:
            keys[:, self.site - self.seen] = 100.0
        self.seen += hidden.shape[1]
        return keys


def force(model, program: str, site: int):
    """Open the gate, call ``program`` at every position, and answer the call made at ``site``."""
    heads = model.nc_heads
    with torch.no_grad():
        heads.gate_scale.fill_(1.0)
        heads.gate.weight.zero_(), heads.gate.bias.fill_(30.0)
        heads.call.weight.zero_(), heads.call.bias.fill_(-30.0)
        heads.call.bias[model.config.nc_programs.index(program)] = 30.0
        heads.site_query.weight.zero_(), heads.site_query.bias.fill_(1.0)
    heads.site_key = ForcedSites(site, heads.dim)
