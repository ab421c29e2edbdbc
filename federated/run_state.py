"""The explicit state of a federated run, and what travels between the coordinator and a client runtime.

:class:`RunState` is everything a run has decided so far: what the coordinator reads and writes each
round and what a checkpoint holds (``federated/checkpoint.py``). Nothing else carries state from one
round to the next: every random choice of a round is seeded from ``(SEED, round, client)``
(:func:`derive_seed`), and the process's global RNG states are saved with each checkpoint.

One round, as data (``docs/ARCHITECTURE.md``):

* coordinator -> runtime, per sampled client: a :class:`Download` (the shared tensors it starts from,
  and the method's per-client server information, e.g. pFedMoAP's experts);
* runtime -> coordinator, per trained client: a :class:`ClientUpdate` (the shared tensors it uploads,
  its summary and train-set size, the side information a method's aggregator needs the first time it
  trains, e.g. CE-LoRA's statistics, and, in process, its personal tensors, which the coordinator keeps
  in ``RunState.personal``; a Flower node keeps them itself).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

State = dict[str, torch.Tensor]


def derive_seed(*parts: int) -> int:
    """A 31-bit seed that depends on every part (stable across processes and platforms)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global RNGs."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class RunState:
    """Everything a run has decided so far (see the module docstring).

    Attributes:
        rounds_done: rounds finished (the 0-based index of the next round).
        global_state: the aggregated shared tensors.
        personal: client id -> its personal tensors (in process; a Flower server holds ``{}`` per client:
            the nodes keep them).
        client_global: client id -> the shared tensors it downloads instead of ``global_state``
            (personalised aggregation, e.g. CE-LoRA).
        side_information: client id -> what it sent once about its data (``FederatedTrainer.side_information``).
        memory: the method's server-step memory (tensors by name, e.g. pFedMoAP's latest prompt of every
            client); ``{}`` for methods without a server step.
        last_trained: client id -> the last 0-based round whose training of it was aggregated.
        optimizer: client id -> its kept optimiser state (``FED.CLIENT_OPTIMIZER_STATE``, named tensors; in
            process; a Flower node keeps its client's).
        results: the results so far (``results.json``'s dict); None before the run writes any.
    """

    rounds_done: int
    global_state: State
    personal: list[State]
    client_global: dict[int, State] = field(default_factory=dict)
    side_information: dict[int, State] = field(default_factory=dict)
    memory: State = field(default_factory=dict)
    last_trained: dict[int, int] = field(default_factory=dict)
    optimizer: dict[int, State] = field(default_factory=dict)
    results: dict | None = None


@dataclass
class Download:
    """What client ``client`` receives before it trains or is evaluated: ``shared`` (the shared tensors it
    starts from) and ``server_information`` (the method's per-client extra, ``{}`` for most methods)."""

    client: int
    shared: State
    server_information: State = field(default_factory=dict)


@dataclass
class ClientUpdate:
    """What a client's local training returns (see the module docstring)."""

    client: int
    shared: State
    summary: dict[str, float]
    num_examples: int
    side_information: State | None = None
    personal: State | None = None
    #: with ``FED.CLIENT_OPTIMIZER_STATE``: the client's kept optimiser state as named tensors
    #: (``FederatedTrainer.client_optimizer_tensors``); kept by the coordinator in process, by the node on Flower
    optimizer: State | None = None
