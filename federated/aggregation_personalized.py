"""Personalised aggregation from client similarity in parameter space and data space (CE-LoRA).

CE-LoRA (Li et al., "Communication-Efficient and Personalized Federated Foundation Model Fine-Tuning
via Tri-Matrix Adaptation") lets the server learn per-client aggregation weights from the clients'
similarity in data space and in parameter space; the published code has only the client half
(per-class GMMs of features) and no server formula. The formula used here:

**Data statistic** (sent once per client, never raw data): for every class c of the label space,
the count ``n_ic`` of client i's training images of class c and the mean ``mu_ic`` of their
L2-normalised frozen CLIP image features (``class_feature_statistics``). From it the class
distribution ``p_ic = n_ic / sum_c n_ic`` and the unit class means ``m_ic = mu_ic / |mu_ic|``.

**Data similarity** ``s_data_ij = sum_c sqrt(p_ic p_jc) * cos(m_ic, m_jc)`` in [-1, 1]: the
Bhattacharyya overlap of the two label distributions, each shared class weighted by how alike the
two clients' images of that class look. It is 1 for identical statistics and 0 for disjoint label
sets (pathological splits), and, unlike a single global mean, it separates "same classes, other
domain" from "same classes, same domain". (A per-class mean is the first moment of the published
per-class GMM; it costs C x D floats once.)

**Parameter similarity** ``s_param_ij = cos(u_i - g, u_j - g)``, with ``u_i`` the flattened upload
of client i and ``g`` the previous global state: clients whose local updates point the same way are
alike. The cosine of the raw uploads would be ~1 for everyone (all start from the same state);
``s_param_ii = 1``, and a zero update has similarity 0 to others.

**Weights** ``w_ij = n_j exp((lambda s_param_ij + (1 - lambda) s_data_ij) / T) / Z_i`` over the
uploading clients j, rows normalised to 1 (``Z_i``). Client j's data size keeps FedAvg's weighting
(T -> infinity gives exactly FedAvg); the temperature T sets how personal the mixes are
(T -> 0: every client keeps its own upload). Client i downloads ``sum_j w_ij u_j``; the global
state (for clients that never trained) is the FedAvg mean. Defaults ``lambda = 0.5``, ``T = 0.2``
(``TRAINER.CELORA.AGG_LAMBDA`` / ``AGG_TEMPERATURE``). Without statistics for some client, the data
term is dropped for every pair of the round (``lambda = 1``) and ``info["data_similarity"]`` says so.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from federated.aggregation import AGGREGATOR_REGISTRY, State, data_size_weights, weighted_average

#: What a client shares once: ``{"counts": (C,) float, "means": (C, D) float}``.
Statistics = dict[str, torch.Tensor]


def class_feature_statistics(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Statistics:
    """Per-class counts ``(C,)`` and means ``(C, D)`` of L2-normalised ``features (N, D)`` (zero rows
    for absent classes)."""
    if features.dim() != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"features must be (N, D) and labels (N,); got {tuple(features.shape)}, {tuple(labels.shape)}")
    feats = F.normalize(features.detach().double().cpu(), dim=-1)
    labels = labels.detach().long().cpu()
    counts = torch.bincount(labels, minlength=num_classes).double()
    sums = torch.zeros(num_classes, feats.shape[1], dtype=torch.float64).index_add_(0, labels, feats)
    means = sums / counts.clamp(min=1).unsqueeze(1)
    return {"counts": counts.float(), "means": means.float()}


def data_similarity(stats: list[Statistics]) -> torch.Tensor:
    """``s_data (K, K)``: Bhattacharyya-weighted cosine of per-class means (module docstring)."""
    counts = torch.stack([s["counts"].double() for s in stats])  # (K, C)
    if (counts.sum(1) <= 0).any():
        raise ValueError("a client's statistics have no samples")
    p = counts / counts.sum(1, keepdim=True)
    m = F.normalize(torch.stack([s["means"].double() for s in stats]), dim=-1)  # (K, C, D)
    cos = torch.einsum("icd,jcd->ijc", m, m)  # (K, K, C)
    overlap = torch.sqrt(p.unsqueeze(1) * p.unsqueeze(0))  # (K, K, C)
    return (overlap * cos).sum(-1)


def parameter_similarity(uploads: list[State], previous: State | None) -> torch.Tensor:
    """``s_param (K, K)``: cosine of the flattened updates ``upload - previous`` (diagonal 1)."""
    keys = sorted(uploads[0])
    flat = torch.stack([torch.cat([u[k].double().flatten() - (previous[k].double().flatten() if previous else 0)
                                   for k in keys]) for u in uploads])
    unit = flat / flat.norm(dim=1, keepdim=True).clamp(min=1e-12)
    sim = unit @ unit.t()
    sim.fill_diagonal_(1.0)
    return sim


def personalized_weights(s_param: torch.Tensor, s_data: torch.Tensor | None, num_samples: list[int],
                         lam: float, temperature: float) -> torch.Tensor:
    """``W (K, K)``, rows sum to 1: ``w_ij ∝ n_j exp((lam s_param_ij + (1 - lam) s_data_ij) / T)``."""
    if temperature <= 0:
        raise ValueError(f"aggregation temperature must be > 0, got {temperature}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"aggregation lambda must be in [0, 1], got {lam}")
    score = s_param if s_data is None else lam * s_param + (1.0 - lam) * s_data
    logits = score / temperature + torch.log(data_size_weights(num_samples)).unsqueeze(0)
    return torch.softmax(logits, dim=1)


@AGGREGATOR_REGISTRY.register()
class SimilarityPersonalized:
    """Per-client mixes of the uploads weighted by parameter- and data-space similarity.

    ``side_information``: ``client id -> Statistics``, what the CE-LoRA trainer's ``side_information``
    computed on each client the first time it trained (the coordinator passes it every round).
    """

    def __init__(self, cfg=None, lam: float | None = None, temperature: float | None = None):
        node = cfg.TRAINER.get("CELORA") if cfg is not None and "TRAINER" in cfg else None
        self.lam = float(lam if lam is not None else (node.AGG_LAMBDA if node is not None else 0.5))
        self.temperature = float(temperature if temperature is not None
                                 else (node.AGG_TEMPERATURE if node is not None else 0.2))

    def __call__(self, uploads: list[State], num_samples: list[int], previous: State | None = None,
                 client_ids: list[int] | None = None, *, round_idx: int | None = None,
                 side_information: Mapping[int, Statistics] | None = None) -> tuple[State, dict]:
        statistics = side_information or {}
        if not uploads or not uploads[0]:
            return {}, {"weights": []}
        ids = list(client_ids) if client_ids is not None else list(range(len(uploads)))
        if len(ids) != len(uploads):
            raise ValueError(f"{len(uploads)} uploads but {len(ids)} client ids")
        fedavg = data_size_weights(num_samples)
        s_param = parameter_similarity(uploads, previous)
        have_stats = all(c in statistics for c in ids)
        s_data = data_similarity([statistics[c] for c in ids]) if have_stats else None
        w = personalized_weights(s_param, s_data, num_samples, self.lam, self.temperature)
        per_client = {cid: weighted_average(uploads, w[i]) for i, cid in enumerate(ids)}
        info = {
            "weights": fedavg.tolist(),
            "personal_weights": [[round(float(x), 6) for x in row] for row in w],
            "data_similarity": "used" if have_stats else "missing statistics: parameter similarity only",
            "per_client": per_client,
        }
        return weighted_average(uploads, fedavg), info
