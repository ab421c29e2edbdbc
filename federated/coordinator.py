"""``Coordinator``: the server side of a federated run, over one explicit :class:`~federated.run_state.RunState`.

Per round the coordinator samples the clients (``FED.FRAC``; every client in round 1), hands each a
:class:`~federated.run_state.Download` (the global shared tensors or its personalised mix, plus the
method's per-client server information), aggregates the :class:`~federated.run_state.ClientUpdate`
objects that come back with the trainer's aggregator (which receives the round index and the clients'
side information), runs the method's server step (``FederatedTrainer.build_server_step``: e.g.
pFedMoAP keeps every client's latest prompt in ``RunState.memory``), combines the clients'
evaluations every ``TEST.EVAL_FREQ`` rounds (and at the end), and writes the results files and an
atomic checkpoint of the run state.

Who trains and evaluates the clients is the driver's business: the in-process loop
(``federated/server.py``) asks its :class:`~federated.runtime.ClientRuntime`, the Flower strategy
(``federated/flower/strategy.py``) sends messages to the nodes, whose ClientApp asks theirs.
"""
from __future__ import annotations

import logging
import os
import statistics

import numpy as np

from federated import console
from federated.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint, set_rng_state
from federated.data import FederatedData
from federated.errors import ConfigError
from federated.results import ResultsWriter, format_table, summaries
from federated.run_state import ClientUpdate, Download, RunState, derive_seed
from federated.split_file import write_split_file
from federated.state import state_nbytes
from utils.plots import plot_accuracy

logger = logging.getLogger("fedtv.server")


class Coordinator:
    """Samples, aggregates, combines evaluations, writes results and checkpoints (module docstring).

    ``trainer``: this process's trainer, for the shared / personal names, the initial tensors, the
    aggregator and the server step (the coordinator never trains it).
    """

    def __init__(self, cfg, trainer, data: FederatedData):
        self.cfg = cfg
        self.trainer = trainer
        self.data = data
        self.num_users = data.num_users
        self.excluded_clients = self._excluded_clients()  # a bad FED.EXCLUDE_CLIENTS fails here, before anything runs
        self.seed = int(cfg.SEED)
        self.output_dir = cfg.OUTPUT_DIR
        self.checkpoint_path = os.path.join(self.output_dir, CHECKPOINT_NAME)
        self.aggregator = trainer.build_aggregator()
        self.server_step = trainer.build_server_step()
        self.trainable = bool(trainer.trainable_parameters())
        self.rounds = int(cfg.OPTIM.ROUND) if self.trainable else 1  # nothing to train: evaluate once
        self.eval_freq = max(int(cfg.TEST.EVAL_FREQ), 1)
        self.writer: ResultsWriter | None = None

    # ------------------------------------------------------------------ the run state
    def fresh_state(self, personal: bool = True) -> RunState:
        """Round 0: the freshly built model's shared tensors and every client's initial personal tensors
        (``personal=False``: ``{}`` per client, a Flower server's state: the nodes keep them)."""
        t = self.trainer
        return RunState(rounds_done=0, global_state=t.initial_shared_state(),
                        personal=[t.initial_personal_state(cid) if personal else {} for cid in range(self.num_users)])

    def restored_state(self, ckpt: dict) -> RunState:
        """The run state a checkpoint (``load_checkpoint``) holds."""
        state = RunState(rounds_done=int(ckpt["round"]), global_state=ckpt["global"], personal=ckpt["personal"],
                         client_global={int(k): v for k, v in ckpt.get("client_global", {}).items()},
                         side_information={int(k): v for k, v in ckpt.get("side_information", {}).items()},
                         memory=dict(ckpt.get("memory", {})), results=ckpt["results"],
                         optimizer={int(k): v for k, v in ckpt.get("optimizer", {}).items()})
        for record in state.results["rounds"][:state.rounds_done]:
            for cid in record["clients"]:
                state.last_trained[int(cid)] = int(record["round"]) - 1
        return state

    def start(self, resume: bool) -> tuple[RunState, dict | None]:
        """The state an in-process run starts from: the checkpoint in ``OUTPUT_DIR`` with ``resume`` (and the
        checkpoint itself; the process's RNG states are set from it), else a fresh one (a warning when an earlier
        run is overwritten)."""
        if resume and os.path.isfile(self.checkpoint_path):
            ckpt = load_checkpoint(self.checkpoint_path, self.trainer, self.num_users, cfg=self.cfg)
            state = self.restored_state(ckpt)
            set_rng_state(ckpt["rng"])
            logger.info("resuming from %s after round %d", self.checkpoint_path, state.rounds_done)
            return state, ckpt
        if resume:
            logger.warning("--resume: no checkpoint in %s, starting from scratch", self.output_dir)
        elif os.path.isfile(self.checkpoint_path):
            logger.warning("%s holds an earlier run: it is overwritten (use --resume to continue it)", self.output_dir)
        return self.fresh_state(), None

    def open_results(self, state: RunState, ckpt: dict | None, execution: dict | None = None) -> ResultsWriter:
        """The run is valid: from here on the output folder changes (split file, results files)."""
        write_split_file(os.path.join(self.output_dir, "split.json"), self.data, self.cfg)
        self.writer = ResultsWriter(self.output_dir, self.cfg, state.results)
        state.results = self.writer.results
        if ckpt is not None:
            self.writer.record_resume(int(ckpt["round"]), ckpt["config_changes"])
        if execution is not None:
            # cost accounting: trainable parameter counts (shared = what is uploaded each round)
            t = self.trainer
            params = t.trainable_parameters()  # personal: the trained tensors (not the client-state buffers)
            self.writer.results["params"] = {"shared": sum(params[k].numel() for k in t.shared_keys()),
                                             "personal": sum(params[k].numel() for k in t.personal_keys()
                                                             if k in params),
                                             "total": sum(p.numel() for p in params.values())}
            self.writer.results["execution"] = execution
        return self.writer

    def set_zero_shot(self, record: dict) -> None:
        self.writer.set_zero_shot(record)
        logger.info(console.zero_shot_line(record))

    # ------------------------------------------------------------------ a round
    def sample_clients(self, round_idx: int) -> list[int]:
        """Clients trained in round ``round_idx`` (0-based), in the order they train: all in round 0
        (``0..K-1``), then ``max(int(frac*K), 1)`` drawn without replacement, in the order drawn (as the
        published loops train them: with one optimiser shared by every client, ``FED.SHARED_OPTIMIZER``,
        the order carries the momentum from client to client)."""
        excluded = self.excluded_clients
        if round_idx == 0 and self.cfg.FED.ALL_CLIENTS_FIRST_ROUND:
            return [c for c in range(self.num_users) if c not in excluded]
        m = max(int(float(self.cfg.FED.FRAC) * self.num_users), 1)
        rng = np.random.default_rng(derive_seed(self.seed, round_idx, 2))
        if not excluded:
            return [int(c) for c in rng.choice(self.num_users, size=min(m, self.num_users), replace=False)]
        eligible = [c for c in range(self.num_users) if c not in excluded]
        return [int(c) for c in rng.choice(eligible, size=min(m, len(eligible)), replace=False)]

    def _excluded_clients(self) -> set[int]:
        """``FED.EXCLUDE_CLIENTS``: clients that never train and are not evaluated (published ``pop(5)``)."""
        excluded = {int(c) for c in self.cfg.FED.get("EXCLUDE_CLIENTS", [])}
        if any(not 0 <= c < self.num_users for c in excluded) or len(excluded) >= self.num_users:
            raise ConfigError(f"FED.EXCLUDE_CLIENTS {sorted(excluded)} must name some (not all) of the clients "
                              f"0..{self.num_users - 1}")
        return excluded

    def evaluated_clients(self) -> list[int]:
        return [cid for cid in range(self.num_users) if cid not in self.excluded_clients]

    def download(self, state: RunState, cid: int) -> Download:
        """What client ``cid`` holds now: the global shared tensors or its personalised mix, and the server
        step's information for it."""
        info = self.server_step.serve(state.memory, cid) if self.server_step is not None else {}
        return Download(cid, state.client_global.get(cid, state.global_state), info)

    def download_bytes(self, state: RunState) -> int:
        """Bytes a client downloads per round (the shared tensors; 0 when nothing is trained)."""
        return state_nbytes(state.global_state) if self.trainable else 0

    def aggregate(self, state: RunState, round_idx: int, updates: list[ClientUpdate], clients: list[int],
                  down: int) -> dict:
        """Fold the round's ``updates`` into ``state`` (aggregation in client-id order, whatever order they
        came in: in-process and Flower sum in the same order; personal tensors and side information kept;
        the server step remembers the uploads). Returns the round's training record (``clients``: the
        clients it lists)."""
        updates = sorted(updates, key=lambda u: u.client)
        for u in updates:
            logger.debug(console.client_train_line(round_idx + 1, u.client, u.summary, u.num_examples))
            if u.personal is not None:
                state.personal[u.client] = u.personal
            if u.side_information is not None:
                state.side_information[u.client] = u.side_information
            if u.optimizer is not None:
                state.optimizer[u.client] = u.optimizer
        uploads = [u.shared for u in updates]
        ids = [u.client for u in updates]
        agg_info: dict = {}
        if uploads and self.trainer.shared_keys():
            state.global_state, agg_info = self.aggregator(uploads, [u.num_examples for u in updates],
                                                           state.global_state, ids, round_idx=round_idx,
                                                           side_information=state.side_information)
            state.client_global.update(agg_info.pop("per_client", {}))
            if self.server_step is not None:
                self.server_step.remember(state.memory, uploads, ids, round_idx)
        state.last_trained.update({cid: round_idx for cid in ids})
        return round_record(round_idx, clients, [u.num_examples for u in updates],
                            [u.summary.get("loss", float("nan")) for u in updates],
                            [u.summary.get("acc", float("nan")) for u in updates], agg_info,
                            up=state_nbytes(uploads[0]) if uploads else 0, down=down)

    def evaluates(self, round_idx: int) -> bool:
        """Whether round ``round_idx`` (0-based) ends with an evaluation."""
        return (round_idx + 1) % self.eval_freq == 0 or round_idx + 1 == self.rounds

    def evaluation_record(self, per_client: dict[int, dict]) -> dict:
        """The round's evaluation record from the clients' evaluations (client id -> ``local``, ``macro_f1``,
        ``base``, ``novel``): Local = mean over clients with a test split (a dataset mixture: per dataset,
        then over datasets) (and its population std over clients),
        Base / Novel = mean over clients, HM = 2BN/(B+N)."""
        for cid, m in sorted(per_client.items()):
            logger.debug(console.client_eval_line(cid, m))
        local = {cid: m["local"] for cid, m in sorted(per_client.items()) if m["local"] is not None}
        f1 = [m["macro_f1"] for _, m in sorted(per_client.items()) if m["macro_f1"] is not None]
        values = list(local.values())

        def mean_of(name: str) -> float | None:
            vals = [m[name] for _, m in sorted(per_client.items()) if m[name] is not None]
            return float(sum(vals) / len(vals)) if vals else None

        base, novel = mean_of("base"), mean_of("novel")
        local_mean = self.data.local_mean(local)  # a mixture: the mean over datasets of their clients' mean
        return {
            "local": local_mean,
            "local_std": float(statistics.pstdev(values)) if len(values) > 1 else (0.0 if values else None),
            "local_macro_f1": float(sum(f1) / len(f1)) if f1 else None,
            "local_per_client": {str(k): v for k, v in local.items()},
            "local_per_domain": self.data.per_domain(local),  # None unless clients belong to domains
            "base": base,
            "novel": novel,
            **summaries(local_mean, base, novel),
        }

    def end_round(self, state: RunState, record: dict, extra: dict | None = None) -> None:
        """Record the finished round and write the checkpoint of ``state`` (``extra``: the engine's entries)."""
        self.writer.add_round(record)
        state.rounds_done = int(record["round"])
        save_checkpoint(self.checkpoint_path, state=state, trainer=self.trainer, num_users=self.num_users,
                        extra=extra)
        logger.info(console.round_line(record, self.rounds))

    def kept_after(self, rounds_done: int) -> str:
        """What the output folder holds when round ``rounds_done + 1`` fails (said in the error message)."""
        if rounds_done > 0:
            return (f"The checkpoint after round {rounds_done} ({self.checkpoint_path}) and the results of rounds "
                    f"1-{rounds_done} are kept (continue with --resume)")
        if os.path.isfile(self.checkpoint_path):
            return (f"No round finished, so this run wrote no checkpoint ({self.checkpoint_path} is still the "
                    f"earlier run's)")
        return "No round finished, so there is no checkpoint"

    def finish(self) -> dict:
        """Close the results files, plot the accuracy curves, log the table; returns the results."""
        self.writer.close()
        plot_accuracy(self.writer.results, os.path.join(self.output_dir, "accuracy.png"))
        logger.info("\n%s", format_table(self.writer.results))
        return self.writer.results


def round_record(round_idx: int, clients: list[int], sizes: list[int], losses: list[float], accs: list[float],
                 agg_info: dict, up: int, down: int) -> dict:
    """The training part of a round's results record (``round`` is 1-based; losses / accuracies are
    averaged with the clients' train-set sizes as weights)."""
    return {
        "round": round_idx + 1,
        "clients": clients,
        "train_loss": float(np.average(losses, weights=sizes)) if losses else None,
        "train_acc": float(np.average(accs, weights=sizes)) if accs else None,
        "aggregation": agg_info,
        "bytes_up_per_client": up,
        "bytes_down_per_client": down,
    }
