"""The in-process engine: a thin driver of one :class:`~federated.coordinator.Coordinator` and one
:class:`~federated.runtime.ClientRuntime` that serves every client.

Per round: the coordinator samples the clients (every client in round 1) and hands out their downloads;
the runtime trains them for ``OPTIM.MAX_EPOCH`` local epochs (together, ``FED.BATCH_CLIENTS``, or one
after another); the coordinator aggregates their updates into the run state, the runtime evaluates
every client every ``TEST.EVAL_FREQ`` rounds (and at the end), the coordinator combines the
evaluations, writes the results files and an atomic checkpoint. Every random choice of a round is
seeded from ``(SEED, round, client)``, so a run resumed from a checkpoint ends exactly as an
uninterrupted one.
"""
from __future__ import annotations

import time

from dassl.engine import NonFiniteLossError
from federated.checkpoint import load_checkpoint
from federated.coordinator import Coordinator
from federated.data import FederatedData
from federated.errors import TrainingDiverged
from federated.run_state import RunState
from federated.runtime import ClientRuntime


class FederatedServer:
    """Runs a federated experiment of ``trainer`` over ``data`` in this process (see the module docstring):
    ``coordinator`` and ``runtime`` (every client's loaders and feature caches)."""

    def __init__(self, cfg, trainer, data: FederatedData):
        self.cfg = cfg
        self.trainer = trainer
        self.data = data
        self.coordinator = Coordinator(cfg, trainer, data)
        self.runtime = ClientRuntime(cfg, trainer, data)
        self.checkpoint_path = self.coordinator.checkpoint_path

    def execution_text(self) -> str:
        return self.runtime.execution_text()

    def run(self, resume: bool = False) -> dict:
        """Run (or resume) the experiment; returns the results dict also written to ``results.json``."""
        c, rt = self.coordinator, self.runtime
        state, ckpt = c.start(resume)
        for cid, tensors in state.optimizer.items():  # a resumed run: the clients' kept optimiser states
            self.trainer.set_client_optimizer_tensors(cid, tensors)
        c.open_results(state, ckpt, execution=rt.execution_record())
        if state.rounds_done == 0 and self.cfg.FED.ZS_REFERENCE:
            c.set_zero_shot(rt.evaluate_zero_shot(c.excluded_clients))
        first = state.rounds_done if c.trainable else 0
        for r in range(first, c.rounds):
            started = time.time()
            clients = c.sample_clients(r)
            down = c.download_bytes(state)
            updates = []
            if c.trainable:
                try:
                    updates = rt.train(r, [c.download(state, cid) for cid in clients], dict(enumerate(state.personal)),
                                       side_wanted=set(clients) - set(state.side_information))
                except NonFiniteLossError as err:
                    c.writer.close()
                    raise TrainingDiverged(f"client {err.context.get('client', '?')} in round {r + 1}: {err}. "
                                           f"{c.kept_after(r)}; lower OPTIM.LR or use PREC fp32") from None
            record = c.aggregate(state, r, updates, sorted(clients), down)
            record["train_order"] = clients
            if c.evaluates(r):
                record.update(self.evaluate(state))
            record["seconds"] = time.time() - started
            if rt.protocol is not None:
                c.writer.results["privacy"] = rt.protocol.report(r + 1, c.writer.results.get("privacy"))
            c.end_round(state, record)
        return c.finish()

    def evaluate(self, state: RunState) -> dict:
        """Every client's model (its download, personal tensors and server information) on its own test
        split, and Base / Novel in base-to-novel runs: the round's evaluation record; plus the global
        model's Base / Novel when every client holds one global model (not a personalised aggregation)."""
        c = self.coordinator
        per_client = self.runtime.evaluate_clients([c.download(state, cid) for cid in c.evaluated_clients()],
                                                   dict(enumerate(state.personal)))
        record = c.evaluation_record(per_client)
        if not state.client_global:
            record.update(self.runtime.global_model_metrics(state.global_state, state.personal[0]))
        return record

    def evaluate_saved(self, model_dir: str) -> dict:
        """``--eval-only``: evaluate the final states saved in ``model_dir`` on this run's data."""
        ckpt = load_checkpoint(model_dir, self.trainer, self.coordinator.num_users)
        record = self.evaluate(self.coordinator.restored_state(ckpt))
        record["round"] = int(ckpt["round"])
        record["model_dir"] = model_dir
        return record
