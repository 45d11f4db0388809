"""Recurrent state across windows for truncated back-propagation through time: reset the streams that
start a new recording (or sequence), detach everything at a truncation boundary.

A state is a list with one entry per stage: None (not started) or a tuple of (B, ...) tensors.
"""

from __future__ import annotations

import torch


def reset_state(state, reset: torch.Tensor):
    """Zero the rows of `state` where `reset` (B,) is True; None stays None (zeros at the next step)."""
    if state is None:
        return None
    if not bool(reset.any()):
        return state
    out = []
    for entry in state:
        if entry is None:
            out.append(None)
            continue
        out.append(tuple(t * (~reset.to(t.device)).view(-1, *([1] * (t.dim() - 1))).to(t.dtype) for t in entry))
    return out


def detach_state(state):
    """The same values, cut from the graph: gradients stop here (the TBPTT truncation)."""
    if state is None:
        return None
    return [None if entry is None else tuple(t.detach() for t in entry) for entry in state]


def state_to(state, device):
    if state is None:
        return None
    return [None if entry is None else tuple(t.to(device) for t in entry) for entry in state]
