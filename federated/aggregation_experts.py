"""pFedMoAP's server step: keep every client's latest prompt, serve each client its K-1 nearest experts.

A server step (``FederatedTrainer.build_server_step``) runs after each aggregation and keeps a memory
in the run state (``RunState.memory``: tensors by name, saved in every checkpoint, so a resumed run
serves exactly what an uninterrupted one would). :class:`PromptExperts`:

* ``remember``: ``memory["client<i>"]`` = the shared tensor ``key`` client ``i`` uploaded in its latest
  training (one ``(M, d)`` prompt per client that has trained);
* ``serve(memory, i)``: ``{"experts": (K-1', M, d)}``, the latest prompts of K-1 other clients (``K =
  min(NUM_EXPERTS, clients)``; fewer while fewer have trained; absent when client ``i`` has not trained
  yet or no other client has: then the client's model is its local prompt alone, as the published first
  round), and ``"own"``: client ``i``'s latest prompt (the local prompt it is evaluated with; the official
  client keeps it itself). ``nearest`` (default): the K-1 clients whose latest prompt is closest to
  client ``i``'s latest prompt in L2 distance (ties: lower client id); ``random``: the first K-1 that
  have trained in a fixed per-client random order of the other clients (seeded by ``SEED`` and ``i``).

Unlike the published selection (a ``torch.topk`` over a Python list, which crashes once more than
``NUM_EXPERTS`` clients have trained, and whose indices skip client ``i``), any number of clients works
and the experts are client ids.
"""
from __future__ import annotations

import numpy as np
import torch

from federated.aggregation import State

SELECTIONS = ("nearest", "random")


def nearest_clients(own: torch.Tensor, others: dict[int, torch.Tensor], k: int) -> list[int]:
    """The ``k`` client ids of ``others`` (id -> tensor shaped like ``own``) closest to ``own`` in L2 distance
    (computed in float64; ties broken by the lower id), nearest first."""
    own64 = own.detach().double().flatten()
    dist = {cid: float((t.detach().double().flatten() - own64).norm()) for cid, t in others.items()}
    return sorted(dist, key=lambda cid: (dist[cid], cid))[:k]


class PromptExperts:
    """Keeps every client's latest ``key`` tensor and serves each client its experts (module docstring)."""

    def __init__(self, key: str, num_experts: int, selection: str = "nearest", seed: int = 0):
        if selection not in SELECTIONS:
            raise ValueError(f"expert selection must be one of {SELECTIONS}, got '{selection}'")
        if num_experts < 1:
            raise ValueError(f"the number of experts must be >= 1, got {num_experts}")
        self.key = key
        self.num_experts = int(num_experts)
        self.selection = selection
        self.seed = int(seed)

    @staticmethod
    def _slot(cid: int) -> str:
        return f"client{cid}"

    def remember(self, memory: State, uploads: list[State], client_ids: list[int], round_idx: int) -> None:
        """Store each uploading client's ``key`` tensor as its latest (CPU copies)."""
        for cid, upload in zip(client_ids, uploads, strict=True):
            memory[self._slot(cid)] = upload[self.key].detach().to("cpu", copy=True)

    def experts_of(self, memory: State, cid: int) -> list[int]:
        """The client ids whose latest tensors client ``cid`` receives (module docstring)."""
        own = memory.get(self._slot(cid))
        others = {int(k[len("client"):]): v for k, v in memory.items()
                  if k.startswith("client") and k != self._slot(cid)}
        k = self.num_experts - 1  # K - 1 with K = min(NUM_EXPERTS, clients): at most every other client
        if own is None or k < 1:
            return []
        if self.selection == "nearest":
            return nearest_clients(own, others, k)
        return sorted(others, key=lambda other: self._rank(cid, other))[:k]

    def _rank(self, cid: int, other: int) -> int:
        """Client ``other``'s place in client ``cid``'s fixed random order (the same whoever has trained)."""
        return int(np.random.SeedSequence([self.seed & 0xFFFFFFFF, cid, other, 3]).generate_state(1)[0])

    def serve(self, memory: State, cid: int) -> State:
        """``{"experts": (E, *shape), "own": shape}`` for client ``cid``: its experts (absent without) and its own
        latest tensor (absent before it trained; what the client evaluates with, as the official code)."""
        chosen = self.experts_of(memory, cid)
        out = {"experts": torch.stack([memory[self._slot(c)] for c in chosen])} if chosen else {}
        if self._slot(cid) in memory:
            out["own"] = memory[self._slot(cid)]
        return out
