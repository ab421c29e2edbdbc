"""``FedTVStrategy``: a Flower strategy that runs FedTV's round logic on Flower messages.

Per round (``Strategy.start`` drives it):

1. ``configure_train``: map node ids to client ids (``query`` messages to nodes not seen yet; before
   round 1, wait up to ``join_timeout`` for every client's node, before a later round up to
   ``rejoin_wait`` for the sampled clients' nodes), sample clients exactly as the
   in-process loop (``FederatedServer.sample_clients``), send each sampled client that has a node its
   download (the global shared tensors, or its personalised mix) and ``round`` / ``seed``.
2. ``aggregate_train``: uploads of the clients that replied, in client order, through the trainer's
   own aggregator (``FederatedServer.aggregator``: FedAvg, SAA, personalised ...). Fewer than
   ``min_clients`` successful replies stop the run (finished rounds are on disk).
3. ``configure_evaluate`` / ``aggregate_evaluate`` (every ``TEST.EVAL_FREQ`` rounds and the last):
   every connected client evaluates its own model; the server combines the metrics with
   ``FederatedServer.combine_evaluations``, then writes the results files and a checkpoint.

A client whose node is gone (killed, timed out, failed) is left out of the round and listed in
``missing_clients``; when its node (restarted) connects again it is queried and takes part again.
Differences from the in-process checkpoint: the personal tensors live on the nodes, so the server's
``checkpoint.pt`` holds empty personal states, plus ``engine = "flower"`` and the ``experiment`` token.

Resume (``restore``): a resumed run is a new Flower run whose rounds Flower numbers from 1 again;
``offset`` (the rounds the checkpoint finished) turns Flower's ``server_round`` into FedTV's round
everywhere (sampling, seeds, ``TEST.EVAL_FREQ``, records, checkpoint). Every message carries the
``experiment`` token (made on a fresh start, kept in the checkpoint, so it survives a resume and differs
between unrelated runs: the nodes key their personal-state store by it) and ``personal-round``: the
round of the client's last training the server aggregated before this one (-1: none). The node loads
its personal state of exactly that round, so a node that trained a round the server never
checkpointed (it died first) still resumes exactly.
"""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from federated import console
from federated.checkpoint import save_checkpoint
from federated.results import ResultsWriter, global_model_metrics
from federated.server import FederatedServer, round_record
from federated.state import state_nbytes

logger = logging.getLogger("fedtv.flower")


class NotEnoughClients(RuntimeError):
    """Too few clients answered; the rounds finished so far are in the results files and checkpoint."""


class FedTVStrategy(Strategy):
    """See the module docstring. ``server`` holds the trainer, the data and the evaluation code."""

    def __init__(self, server: FederatedServer, writer: ResultsWriter, *, round_timeout: float = 600.0,
                 join_timeout: float = 300.0, rejoin_wait: float = 0.0, min_clients: int = 1):
        self.server = server
        self.writer = writer
        self.round_timeout = float(round_timeout)
        self.join_timeout = float(join_timeout)
        self.rejoin_wait = float(rejoin_wait)
        self.min_clients = max(int(min_clients), 1)
        t = server.trainer
        self.trainable = bool(t.trainable_parameters())
        self.global_state = t.initial_shared_state()
        self.client_global: dict[int, dict] = {}
        self.node_of: dict[int, int] = {}  # client id -> node id
        self.client_of: dict[int, int] = {}  # node id -> client id
        self.eval_freq = max(int(server.cfg.TEST.EVAL_FREQ), 1)
        self.rounds = int(server.cfg.OPTIM.ROUND) if self.trainable else 1
        self._record: dict = {}
        self._started = 0.0
        self.offset = 0  # rounds finished before this Flower run (a resumed run)
        self.token = uuid.uuid4().hex  # the experiment's identity on the nodes
        self.last_trained: dict[int, int] = {}  # client id -> last round (0-based) whose training was aggregated
        self.side_information: dict[int, dict] = {}  # client id -> the trainer's side information it sent

    def restore(self, ckpt: dict) -> None:
        """Continue the Flower checkpoint ``ckpt`` (``federated.checkpoint.load_checkpoint``): its global
        and personalised shared tensors, its experiment token and round; ``writer`` holds its results."""
        self.offset = min(int(ckpt["round"]), self.rounds)
        self.token = str(ckpt["experiment"])
        self.global_state = ckpt["global"]
        self.client_global = {int(k): v for k, v in ckpt.get("client_global", {}).items()}
        for record in self.writer.results["rounds"][:self.offset]:
            for cid in record["clients"]:
                self.last_trained[int(cid)] = int(record["round"]) - 1

    @property
    def remaining_rounds(self) -> int:
        return max(self.rounds - self.offset, 0)

    def summary(self) -> None:
        logger.debug("FedTVStrategy: trainer %s, aggregator %s, %d clients, rounds %d..%d, min %d clients per round",
                    type(self.server.trainer).__name__, type(self.server.aggregator).__name__,
                    self.server.num_users, self.offset + 1, self.rounds, self.min_clients)

    # ------------------------------------------------------------------ nodes
    def discover(self, grid: Grid) -> None:
        """Ask nodes not seen yet for their client id; forget nodes that left."""
        connected = set(grid.get_node_ids())
        for node in [n for n in self.client_of if n not in connected]:
            cid = self.client_of.pop(node)
            if self.node_of.get(cid) == node:
                del self.node_of[cid]
        new = sorted(connected - set(self.client_of))
        if not new:
            return
        queries = [Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=n, message_type=MessageType.QUERY)
                   for n in new]
        for reply in grid.send_and_receive(queries, timeout=self.round_timeout):
            if reply.has_error():
                logger.warning("node %d did not answer the query: %s", reply.metadata.src_node_id, reply.error.reason)
                continue
            node, cid = reply.metadata.src_node_id, int(reply.content["config"]["client-id"])
            old = self.node_of.get(cid)
            if old is not None and old != node:
                logger.info("client %d moved from node %d to node %d (restarted node)", cid, old, node)
                self.client_of.pop(old, None)
            self.node_of[cid], self.client_of[node] = node, cid

    def wait_for_clients(self, grid: Grid, clients: list[int], timeout: float) -> None:
        """Wait up to ``timeout`` seconds until every client in ``clients`` has a node."""
        deadline = time.time() + timeout
        while True:
            self.discover(grid)
            missing = sorted(set(clients) - set(self.node_of))
            if not missing or time.time() >= deadline:
                break
            time.sleep(1.0)
        if missing:
            logger.warning("clients without a node after %.0fs: %s", timeout, missing)
        if len(self.node_of) < self.min_clients:
            raise NotEnoughClients(f"{len(self.node_of)} client node(s) connected, min-clients is {self.min_clients}")

    def _download(self, cid: int) -> dict:
        return self.client_global.get(cid, self.global_state)

    def _messages(self, clients: list[int], message_type: str, config: dict) -> list[Message]:
        def config_of(cid: int) -> ConfigRecord:
            extra = {"side-information": cid not in self.side_information} if message_type == MessageType.TRAIN else {}
            return ConfigRecord({**config, "experiment": self.token, "personal-round": self.last_trained.get(cid, -1),
                                 **extra})

        return [Message(RecordDict({"arrays": ArrayRecord(self._download(cid)), "config": config_of(cid)}),
                        dst_node_id=self.node_of[cid], message_type=message_type) for cid in clients]

    def _round(self, server_round: int) -> int:
        """FedTV's 0-based round of Flower's ``server_round`` (1-based within this Flower run)."""
        return self.offset + server_round - 1

    def _ok_replies(self, replies: Iterable[Message], step: str) -> list[Message]:
        ok = []
        for reply in replies:
            if reply.has_error():  # the source of an error reply may be the SuperLink, not the node
                logger.warning("%s: a client failed: %s", step, reply.error.reason)
            else:
                ok.append(reply)
        return ok

    # ------------------------------------------------------------------ training
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._started = time.time()
        r = self._round(server_round)
        sampled = self.server.sample_clients(r)
        if server_round == 1:  # the first round of this Flower run (a resumed run waits as a fresh one)
            self.wait_for_clients(grid, list(range(self.server.num_users)), self.join_timeout)
        else:
            self.wait_for_clients(grid, sampled, self.rejoin_wait)
        self._record = {"sampled": sampled, "down": state_nbytes(self.global_state) if self.trainable else 0}
        if not self.trainable:
            return []
        present = [cid for cid in sampled if cid in self.node_of]
        if server_round == 1:
            logger.info("round %d/%d: %d client(s) train on their nodes (a node first encodes its clients' training "
                        "images, unless its feature cache holds them)", r + 1, int(self.server.cfg.OPTIM.ROUND),
                        len(present))
        return self._messages(present, MessageType.TRAIN, {"round": r, "seed": self.server.seed})

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        r = self._round(server_round)
        by_client = {int(m.content["metrics"]["client-id"]): m for m in self._ok_replies(replies, "train")}
        clients = sorted(by_client)
        if self.trainable and len(clients) < self.min_clients:
            raise NotEnoughClients(f"round {r + 1}: {len(clients)} client(s) finished training "
                                   f"(min-clients {self.min_clients}); finished rounds are in {self.server.output_dir}")
        uploads = [dict(by_client[c].content["arrays"].to_torch_state_dict()) for c in clients]
        metrics = [by_client[c].content["metrics"] for c in clients]
        sizes = [int(m["num-examples"]) for m in metrics]
        for cid in clients:
            if "side" in by_client[cid].content:
                self.side_information[cid] = dict(by_client[cid].content["side"].to_torch_state_dict())
        agg_info: dict = {}
        if uploads and self.server.trainer.shared_keys():
            self.global_state, agg_info = self.server.aggregator(uploads, sizes, self.global_state, clients,
                                                                 round_idx=r, side_information=self.side_information)
            self.client_global.update(agg_info.pop("per_client", {}))
        self.last_trained.update({cid: r for cid in clients})
        record = round_record(r, clients, sizes, [float(m["loss"]) for m in metrics],
                              [float(m["acc"]) for m in metrics], agg_info,
                              up=state_nbytes(uploads[0]) if uploads else 0, down=self._record["down"])
        record["missing_clients"] = sorted(set(self._record["sampled"]) - set(clients)) if self.trainable else []
        self._record = record
        summary = {k: record[k] for k in ("train_loss", "train_acc") if record[k] is not None}
        return ArrayRecord(self.global_state), MetricRecord(summary) if summary else None

    # ------------------------------------------------------------------ evaluation
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        done = self._round(server_round) + 1
        if done % self.eval_freq and done != self.rounds:
            return []
        return self._messages(sorted(self.node_of), MessageType.EVALUATE, {"round": done - 1})

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        per_client = {}
        for reply in self._ok_replies(replies, "evaluate"):
            m = reply.content["metrics"]
            per_client[int(m["client-id"])] = {k: (float(m[k]) if k in m else None)
                                               for k in ("local", "macro_f1", "base", "novel")}
        record = self._record
        if per_client:
            record.update(self.server.combine_evaluations(per_client))
            record["evaluated_clients"] = sorted(per_client)
            if not self.client_global:  # one global model: measured here, as the in-process loop does
                trainer = self.server.trainer
                record.update(global_model_metrics(self.server, self.global_state,
                                                   trainer.get_state(trainer.personal_keys())))
        record["seconds"] = time.time() - self._started
        self.writer.add_round(record)
        save_checkpoint(self.server.checkpoint_path, round_done=record["round"], trainer=self.server.trainer,
                        global_state=self.global_state, personal=[{} for _ in range(self.server.num_users)],
                        results=self.writer.results, num_users=self.server.num_users,
                        client_global=self.client_global, extra={"engine": "flower", "experiment": self.token})
        logger.info(console.round_line(record, self.rounds))
        if record.get("local") is not None:
            return MetricRecord({k: record[k] for k in ("local", "base", "novel", "hm") if record.get(k) is not None})
        return None
