"""Helpers on state dicts (``{tensor name: tensor}``), the unit the coordinator and clients exchange."""
from __future__ import annotations

import torch


def state_nbytes(state: dict[str, torch.Tensor]) -> int:
    """Bytes needed to send ``state`` (sum of numel * element size)."""
    return int(sum(t.numel() * t.element_size() for t in state.values()))
