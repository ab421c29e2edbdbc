"""What a Flower process keeps: the experiment (data, trainer, frozen CLIP) and a node's personal state.

``experiment(cfg)`` builds the data, the trainer and a ``FederatedServer`` exactly as
``federated_main.py`` does (seeded with ``SEED`` before the data and the trainer, so every process
gets the same initial tensors) and caches them per process: Ray simulation actors and the ServerApp
build them once; a deployment SuperNode, which runs every message in a fresh process, rebuilds them
from local disk (the frozen CLIP through ``trainers.base.load_frozen_clip``, the training-view image
features memory-mapped from the on-disk feature cache).

``PersonalStore``: a node's personal tensors live in Flower's ``context.state`` (one run, one node)
and are mirrored to ``<state-dir>/run<run id>/client<k>.pt`` (``state-dir`` from the node config,
default ``OUTPUT_DIR/flower_nodes``) with an atomic write after every local
training, so a SuperNode restarted during the run resumes its own personalisation. Before its first
training a client holds the trainer's initial personal tensors, as in the in-process loop.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, Context

from dassl.engine.trainer import atomic_torch_save
from federated.server import FederatedServer

logger = logging.getLogger("fedtv.flower")

_EXPERIMENTS: dict[str, Experiment] = {}
PERSONAL_KEY = "fedtv.personal"


@dataclass
class Experiment:
    """One process's view of a run: ``server`` holds the data, the trainer and the evaluation code;
    ``initial_personal`` the personal tensors every client starts from."""

    cfg: object
    server: FederatedServer
    initial_personal: dict[str, torch.Tensor]

    @property
    def trainer(self):
        return self.server.trainer


def experiment(cfg) -> Experiment:
    """The run's experiment in this process (built on first use; same RNG order as ``federated_main``)."""
    key = cfg.dump()
    if key not in _EXPERIMENTS:
        import datasets  # noqa: F401  (registers the datasets in a fresh process)
        import trainers  # noqa: F401  (registers the trainers)
        from dassl.engine import build_trainer
        from dassl.utils import set_random_seed
        from federated.data import build_federated_data

        set_random_seed(int(cfg.SEED))
        data = build_federated_data(cfg)
        trainer = build_trainer(cfg, classnames=data.classnames)
        server = FederatedServer(cfg, trainer, data)
        _EXPERIMENTS[key] = Experiment(cfg, server, trainer.get_state(trainer.personal_keys()))
    return _EXPERIMENTS[key]


class PersonalStore:
    """Client ``client_id``'s personal tensors for run ``context.run_id`` (see the module docstring)."""

    def __init__(self, context: Context, client_id: int, state_dir: str):
        self.context = context
        self.client_id = client_id
        self.path = os.path.join(state_dir, f"run{context.run_id}", f"client{client_id}.pt")

    def load(self, initial: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Personal tensors from ``context.state``, else from disk (restarted node), else ``initial``."""
        if not initial:
            return {}
        if PERSONAL_KEY in self.context.state.array_records:
            return dict(self.context.state.array_records[PERSONAL_KEY].to_torch_state_dict())
        if os.path.isfile(self.path):
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
            if saved.get("client") != self.client_id or set(saved["state"]) != set(initial):
                raise ValueError(f"{self.path} does not hold client {self.client_id}'s personal state of this model")
            logger.warning("client %d: personal state restored from %s (restarted node)", self.client_id, self.path)
            self.context.state.array_records[PERSONAL_KEY] = ArrayRecord(saved["state"])
            return dict(saved["state"])
        return {k: v.clone() for k, v in initial.items()}

    def save(self, state: dict[str, torch.Tensor], round_idx: int) -> None:
        """Keep ``state`` in ``context.state`` and write it atomically to the node's disk."""
        if not state:
            return
        self.context.state.array_records[PERSONAL_KEY] = ArrayRecord(state)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        atomic_torch_save({"client": self.client_id, "round": round_idx, "state": state}, self.path)
