"""Server-side aggregation of the shared tensors.

An aggregator is called once per round with the uploads of the sampled clients:
``aggregator(uploads, num_samples, previous_global, client_ids, round_idx=r, side_information=s)
-> (new_global, info)``, where ``uploads`` is a list of ``{key: tensor}`` holding only shared keys,
``num_samples`` the clients' train-set sizes, ``client_ids`` who uploaded, ``round_idx`` the 0-based
round, ``side_information`` ``{client id: what the trainer's side_information gave}`` for the clients
that sent it so far, and ``info`` a dict with at least the per-client ``weights`` (JSON-able; they
sum to 1). A personalised aggregator (each client downloads its own
mix, e.g. CE-LoRA) also puts ``info["per_client"] = {client_id: state}``: the server then sends
that state instead of ``new_global`` to those clients (and does not write it to results.json).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from dassl.utils.registry import Registry

AGGREGATOR_REGISTRY = Registry("AGGREGATOR")

State = dict[str, torch.Tensor]


def data_size_weights(num_samples: list[int]) -> torch.Tensor:
    """FedAvg weights ``n_i / sum_j n_j`` (float64, sums to 1). Raises on empty or all-zero input."""
    n = torch.tensor([float(x) for x in num_samples], dtype=torch.float64)
    if n.numel() == 0 or float(n.sum()) <= 0:
        raise ValueError(f"cannot weight clients by data size {num_samples}")
    return n / n.sum()


def weighted_average(uploads: list[State], weights: torch.Tensor) -> State:
    """``sum_i w_i * upload_i`` for every key (computed in float64, returned in the upload dtype)."""
    if len(uploads) != len(weights):
        raise ValueError(f"{len(uploads)} uploads but {len(weights)} weights")
    if not uploads:
        return {}
    keys = list(uploads[0])
    for i, up in enumerate(uploads[1:], start=1):
        if list(up) != keys:
            raise ValueError(f"client upload {i} has keys {sorted(up)}, expected {sorted(keys)}")
    out: State = {}
    for k in keys:
        acc = torch.zeros_like(uploads[0][k], dtype=torch.float64)
        for w, up in zip(weights.tolist(), uploads, strict=True):
            acc += w * up[k].to(torch.float64)
        out[k] = acc.to(uploads[0][k].dtype)
    return out


@AGGREGATOR_REGISTRY.register()
class FedAvg:
    """Weighted FedAvg (McMahan et al.): weights proportional to client train-set size."""

    def __init__(self, cfg=None):
        self.cfg = cfg

    def __call__(self, uploads: list[State], num_samples: list[int], previous: State | None = None,
                 client_ids: list[int] | None = None, *, round_idx: int | None = None,
                 side_information: Mapping[int, State] | None = None) -> tuple[State, dict]:
        if not uploads or not uploads[0]:
            return {}, {"weights": []}
        weights = data_size_weights(num_samples)
        return weighted_average(uploads, weights), {"weights": weights.tolist()}


@AGGREGATOR_REGISTRY.register()
class FedAvgUniform(FedAvg):
    """Unweighted FedAvg: the plain mean of the uploads, every client weight ``1 / K`` whatever its data size
    (FedTPG's, FedMVP's, FedMGP's and DP-FPL's published servers). ``FED.AGGREGATION fedavg_uniform``."""

    def __call__(self, uploads: list[State], num_samples: list[int], previous: State | None = None,
                 client_ids: list[int] | None = None, *, round_idx: int | None = None,
                 side_information: Mapping[int, State] | None = None) -> tuple[State, dict]:
        if not uploads or not uploads[0]:
            return {}, {"weights": []}
        weights = torch.full((len(uploads),), 1.0 / len(uploads), dtype=torch.float64)
        return weighted_average(uploads, weights), {"weights": weights.tolist()}


_ALIASES = {"fedavg": "FedAvg", "fedavg_uniform": "FedAvgUniform", "fedavg-uniform": "FedAvgUniform"}


def build_aggregator(name: str, cfg=None) -> Callable:
    """The aggregator registered as ``name`` (case-insensitive aliases such as ``fedavg``)."""
    return AGGREGATOR_REGISTRY.get(_ALIASES.get(name.lower(), name))(cfg)
