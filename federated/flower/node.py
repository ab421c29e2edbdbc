"""What a Flower process keeps: the experiment (data, trainer, frozen CLIP) and a node's personal state.

``experiment(cfg)`` builds the data, the trainer and a ``ClientRuntime`` exactly as
``federated_main.py`` does (seeded with ``SEED`` before the data and the trainer, so every process
gets the same initial tensors) and caches them per process: Ray simulation actors and the ServerApp
build them once; a deployment SuperNode, which runs every message in a fresh process, rebuilds them
from local disk (the frozen CLIP through ``trainers.base.load_frozen_clip``, the training-view image
features memory-mapped from the on-disk feature cache).

``PersonalStore``: a node's personal tensors after each of its last ``KEEP_ROUNDS`` trainings, by
round, in Flower's ``context.state`` (one run, one node) and mirrored to
``<state-dir>/exp-<experiment>/client<k>.pt`` (``state-dir`` from the node config, default
``OUTPUT_DIR/flower_nodes``; ``experiment``: the token the server makes on a fresh start and keeps in
its checkpoint) with an atomic write after every local training. The token survives a resumed run (a
new Flower run id) and differs between unrelated runs, so a resumed run finds the nodes'
personalisation and a fresh run in the same directories never does. The server names the round whose
state a message needs (``personal-round``: the client's last aggregated training, -1 = none, i.e. the
trainer's initial personal tensors); a node may hold a newer one (it trained a round the server died
before checkpointing), which is ignored. A SuperNode restarted during the run reads its state back
from disk. A state that was asked for and is gone (the node lost its ``state-dir``) is an error, not
a silent restart from the initial tensors. With ``FED.CLIENT_OPTIMIZER_STATE`` a round's record also
holds the client's kept optimiser state (``optimizer/<model>/<index>/<key>``,
``FederatedTrainer.client_optimizer_tensors``), which the node hands back to its trainer before the
client's next training: a Flower process's trainer is not the client's own.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, Context

from dassl.engine.trainer import atomic_torch_save
from federated.runtime import ClientRuntime

logger = logging.getLogger("fedtv.flower")

_EXPERIMENTS: dict[str, Experiment] = {}
PERSONAL_KEY = "fedtv.personal"
#: Names of the optimiser-state tensors in a stored round (the rest are the personal tensors).
OPTIMIZER_PREFIX = "optimizer/"


@dataclass
class Experiment:
    """One process's view of a run: ``runtime`` holds the data, the trainer (whose
    ``initial_personal_state(cid)`` is what client ``cid`` starts from), the training and evaluation code
    of the clients this process serves and their caches only."""

    cfg: object
    runtime: ClientRuntime

    @property
    def trainer(self):
        return self.runtime.trainer

    @property
    def data(self):
        return self.runtime.data


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
        runtime = ClientRuntime(cfg, trainer, data, clients=[])  # a node caches only the clients it trains
        _EXPERIMENTS[key] = Experiment(cfg, runtime)
    return _EXPERIMENTS[key]


#: States kept per client: the one the server may still ask for, a newer one it may not have
#: aggregated (it died first) and one more for a lost reply.
KEEP_ROUNDS = 3
_TOKEN = re.compile(r"[0-9a-f]{8,64}")


class PersonalStateMissing(RuntimeError):
    """The server asked for a personal state this node does not hold."""


class PersonalStore:
    """Client ``client_id``'s personal tensors in experiment ``token`` (see the module docstring)."""

    def __init__(self, context: Context, client_id: int, state_dir: str, token: str):
        if not _TOKEN.fullmatch(token):
            raise ValueError(f"the server sent a malformed experiment token {token!r}")
        self.context = context
        self.client_id = client_id
        self.token = token
        self.path = os.path.join(state_dir, f"exp-{token}", f"client{client_id}.pt")

    @staticmethod
    def _key(round_idx: int) -> str:
        return f"{PERSONAL_KEY}.{round_idx}"

    def _memory_rounds(self) -> list[int]:
        prefix = f"{PERSONAL_KEY}."
        return sorted(int(k[len(prefix):]) for k in self.context.state.array_records if k.startswith(prefix))

    def _disk(self, initial: dict[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
        """The states mirrored on disk (round -> tensors), validated; {} without a file."""
        if not os.path.isfile(self.path):
            return {}
        saved = torch.load(self.path, map_location="cpu", weights_only=True)
        if (saved.get("client") != self.client_id or saved.get("experiment") != self.token
                or any(set(_split(state)[0]) != set(initial) for state in saved["states"].values())):
            raise ValueError(f"{self.path} does not hold client {self.client_id}'s personal state of this model")
        return {int(r): state for r, state in saved["states"].items()}

    def load(self, initial: dict[str, torch.Tensor], round_idx: int) -> dict[str, torch.Tensor]:
        """Personal tensors after this client's training in round ``round_idx`` (``initial`` when -1): from
        ``context.state``, else from disk (restarted node, resumed run)."""
        if not initial:
            return {}
        if round_idx < 0:
            return {k: v.clone() for k, v in initial.items()}
        return _split(self._record(initial, round_idx))[0]

    def load_optimizer(self, initial: dict[str, torch.Tensor], round_idx: int) -> dict[str, torch.Tensor]:
        """The optimiser state this client kept after its training in round ``round_idx`` ({} when -1)."""
        return {} if round_idx < 0 else _split(self._record(initial, round_idx))[1]

    def _record(self, initial: dict[str, torch.Tensor], round_idx: int) -> dict[str, torch.Tensor]:
        key = self._key(round_idx)
        if key in self.context.state.array_records:
            return dict(self.context.state.array_records[key].to_torch_state_dict())
        states = self._disk(initial)
        if round_idx not in states:
            raise PersonalStateMissing(
                f"client {self.client_id} has no personal state of round {round_idx + 1} in {self.path} (it holds "
                f"rounds {[r + 1 for r in sorted(states)]}): start the node with the state-dir of its earlier runs")
        logger.warning("client %d: personal state restored from %s (round %d)", self.client_id, self.path,
                       round_idx + 1)
        self.context.state.array_records[key] = ArrayRecord(states[round_idx])
        return dict(states[round_idx])

    def save(self, personal: dict[str, torch.Tensor], round_idx: int,
             optimizer: dict[str, torch.Tensor] | None = None) -> None:
        """Keep ``personal`` (and ``optimizer``, given when the client keeps its optimiser state, even empty) as
        round ``round_idx``'s in ``context.state`` and on disk (atomically), with the ``KEEP_ROUNDS - 1`` states
        before it."""
        if not personal and optimizer is None:
            return
        state = {**personal, **{OPTIMIZER_PREFIX + k: v for k, v in (optimizer or {}).items()}}
        states = {r: s for r, s in self._disk(personal).items() if r < round_idx}
        states[round_idx] = state
        keep = sorted(states)[-KEEP_ROUNDS:]
        for r in self._memory_rounds():
            if r not in keep:
                del self.context.state.array_records[self._key(r)]
        self.context.state.array_records[self._key(round_idx)] = ArrayRecord(state)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        atomic_torch_save({"client": self.client_id, "experiment": self.token, "round": round_idx,
                           "states": {r: states[r] for r in keep}}, self.path)


def _split(record: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A stored round as (personal tensors, optimiser-state tensors without their prefix)."""
    personal = {k: v for k, v in record.items() if not k.startswith(OPTIMIZER_PREFIX)}
    return personal, {k[len(OPTIMIZER_PREFIX):]: v for k, v in record.items() if k.startswith(OPTIMIZER_PREFIX)}
