"""Heads set by hand so that a test knows which call the model makes (tests stand in for training)."""
import torch

from modeling_nclama.heads import HeadReader


class ForcedSites(HeadReader):
    """A site reader (``heads.SITE_READERS``' interface) under which every position after ``site`` answers the call
    made at ``site``: a new site at ``site`` and before it, continue after it."""

    def __init__(self, site: int):
        super().__init__()
        self.site, self.seen = site, 0

    def forward(self, hidden, ids, start):  # on the prompt, then (with a KV cache) on one new position at a time
        positions = torch.arange(start, ids.shape[1])
        return torch.where(positions > self.site, 30.0, -30.0).expand(ids.shape[0], -1)


def force(model, program: str, site: int):
    """Open the gate, call ``program`` at every position, and answer the call made at ``site``."""
    heads = model.nc_heads
    with torch.no_grad():
        heads.gate_scale.fill_(1.0)
        heads.gate.weight.zero_(), heads.gate.bias.fill_(30.0)
        call = model.config.nc_programs.index(program)
        if model.config.nc_call_reader == "hidden":
            heads.call.scores.weight.zero_(), heads.call.scores.bias.fill_(-30.0)
            heads.call.scores.bias[call] = 30.0
        else:  # every token is evidence for the program
            heads.call.keywords.weight.fill_(-30.0)
            heads.call.keywords.weight[:, call] = 30.0
    heads.sites = ForcedSites(site)
