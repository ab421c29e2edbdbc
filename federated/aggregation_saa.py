"""FedTV's Similarity-Aware Aggregation (SAA), registered as ``SAA`` (alias ``saa``).

For every shared tensor ``k`` separately, with ``p_i = n_i / sum_j n_j`` the data share of upload
``i`` and ``w_prev`` the previous global tensor:

    s_i = cos(flatten(w_i^k), flatten(w_prev^k))
    a_i = softmax(s / T)_i
    f_i = p_i a_i / sum_j p_j a_j
    w^k = sum_i f_i w_i^k

In round 1 (``round_idx == 0``, which the coordinator passes) and when there is no previous global,
it is data-size FedAvg, as in the published code: the previous global of round 1 is only the random
initialisation. The round index travels with the call, so a resumed run behaves exactly like an
uninterrupted one.

The temperature ``T`` (published: 1.0, hard-coded) comes from the constructor, else
``cfg.TRAINER.FEDTV.SAA_TEMP``, else 1.0.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from federated.aggregation import _ALIASES, AGGREGATOR_REGISTRY, State, data_size_weights, weighted_average


def similarity_weights(uploads: list[torch.Tensor], previous: torch.Tensor, data_share: torch.Tensor,
                       temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SAA weights of one tensor. ``uploads``: N tensors of any common shape; ``previous``: same shape;
    ``data_share``: ``(N,)`` summing to 1. Returns ``(weights (N,) float64 summing to 1, cosines (N,))``."""
    prev = previous.detach().to(torch.float64).flatten()
    flat = torch.stack([u.detach().to(torch.float64).flatten() for u in uploads])  # (N, P)
    cos = F.cosine_similarity(flat, prev.unsqueeze(0).expand_as(flat), dim=1, eps=1e-12)
    attention = torch.softmax(cos / temperature, dim=0)
    weights = data_share.to(torch.float64) * attention
    return weights / weights.sum(), cos


@AGGREGATOR_REGISTRY.register()
class SAA:
    """Similarity-aware aggregation (see the module docstring).

    ``info``: ``weights`` (per client, the mean over tensors, sums to 1), ``weights_per_tensor`` and
    ``cosine_per_tensor`` (``{key: [per client]}``), and ``rule`` ("fedavg" in the first round).
    """

    def __init__(self, cfg=None, temperature: float | None = None):
        if temperature is None:
            node = cfg.TRAINER.get("FEDTV") if cfg is not None else None
            temperature = float(node.SAA_TEMP) if node is not None and "SAA_TEMP" in node else 1.0
        if not temperature > 0:
            raise ValueError(f"SAA temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def __call__(self, uploads: list[State], num_samples: list[int], previous: State | None = None,
                 client_ids: list[int] | None = None, *, round_idx: int | None = None,
                 side_information: Mapping[int, State] | None = None) -> tuple[State, dict]:
        if not uploads or not uploads[0]:
            return {}, {"weights": []}
        share = data_size_weights(num_samples)
        if not previous or round_idx == 0:  # round 1: the previous global is the random initialisation
            return weighted_average(uploads, share), {"rule": "fedavg", "weights": share.tolist()}
        missing = set(uploads[0]) - set(previous)
        if missing:
            raise ValueError(f"SAA: the previous global state lacks the shared tensors {sorted(missing)}")
        out: State = {}
        per_tensor, cosines = {}, {}
        for key in uploads[0]:
            weights, cos = similarity_weights([u[key] for u in uploads], previous[key], share, self.temperature)
            out[key] = weighted_average([{key: u[key]} for u in uploads], weights)[key]
            per_tensor[key], cosines[key] = weights.tolist(), cos.tolist()
        mean = torch.tensor(list(per_tensor.values()), dtype=torch.float64).mean(dim=0)
        info = {"rule": "saa", "temperature": self.temperature, "weights": mean.tolist(),
                "weights_per_tensor": per_tensor, "cosine_per_tensor": cosines}
        return out, info


_ALIASES["saa"] = "SAA"
