"""``FedTVStrategy``: a Flower strategy that runs FedTV's round logic on Flower messages.

Per round (``Strategy.start`` drives it):

1. ``configure_train``: map node ids to client ids (``query`` messages to nodes not seen yet; before
   round 1, wait up to ``join_timeout`` for every client's node, before a later round up to
   ``rejoin_wait`` for the sampled clients' nodes), sample clients exactly as the
   in-process loop (``Coordinator.sample_clients``), send each sampled client that has a node its
   download (``Coordinator.download``: the global shared tensors or its personalised mix, and the
   method's server information as ``server``) and ``round`` / ``seed``.
2. ``aggregate_train``: the updates of the clients that replied, folded into the run state by
   ``Coordinator.aggregate`` (the trainer's aggregator, the method's server step). Fewer than
   ``min_clients`` successful replies stop the run (finished rounds are on disk).
3. ``configure_evaluate`` / ``aggregate_evaluate`` (every ``TEST.EVAL_FREQ`` rounds and the last):
   every connected client evaluates its own model; ``Coordinator.evaluation_record`` combines the
   metrics, ``Coordinator.end_round`` writes the results files and a checkpoint.

The strategy is a thin driver: the run state (``RunState``) and every decision are the coordinator's,
as in the in-process loop (``federated/server.py``); the strategy only maps them to Flower messages.

A client whose node is gone (killed, timed out, failed) is left out of the round and listed in
``missing_clients``; when its node (restarted) connects again it is queried and takes part again.
Differences from the in-process checkpoint: the personal tensors live on the nodes, so the server's
``checkpoint.pt`` holds empty personal states, plus ``engine = "flower"`` and the ``experiment`` token.

Resume (a restored run state and token): a resumed run is a new Flower run whose rounds Flower numbers from 1 again;
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

from federated.coordinator import Coordinator
from federated.results import SUMMARIES
from federated.run_state import ClientUpdate, RunState
from federated.runtime import ClientRuntime

logger = logging.getLogger("fedtv.flower")


class NotEnoughClients(RuntimeError):
    """Too few clients answered; the rounds finished so far are in the results files and checkpoint."""


class FedTVStrategy(Strategy):
    """See the module docstring. ``coordinator`` holds the run's decisions, ``runtime`` (this process's,
    training no client) the zero-shot reference and the global model's evaluation."""

    def __init__(self, coordinator: Coordinator, runtime: ClientRuntime, state: RunState, *,
                 token: str | None = None, round_timeout: float = 600.0, join_timeout: float = 300.0,
                 rejoin_wait: float = 0.0, min_clients: int = 1):
        """``state``: the run state to continue (fresh, or restored from a Flower checkpoint together with its
        experiment ``token``; None: a fresh run's new token)."""
        self.coordinator = coordinator
        self.runtime = runtime
        self.state = state
        self.round_timeout = float(round_timeout)
        self.join_timeout = float(join_timeout)
        self.rejoin_wait = float(rejoin_wait)
        self.min_clients = max(int(min_clients), 1)
        self.node_of: dict[int, int] = {}  # client id -> node id
        self.client_of: dict[int, int] = {}  # node id -> client id
        self._record: dict = {}
        self._started = 0.0
        self.offset = min(state.rounds_done, coordinator.rounds)  # rounds finished before this Flower run
        self.token = token or uuid.uuid4().hex  # the experiment's identity on the nodes

    @property
    def remaining_rounds(self) -> int:
        return max(self.coordinator.rounds - self.offset, 0)

    def summary(self) -> None:
        c = self.coordinator
        logger.debug("FedTVStrategy: trainer %s, aggregator %s, %d clients, rounds %d..%d, min %d clients per round",
                     type(c.trainer).__name__, type(c.aggregator).__name__, c.num_users, self.offset + 1, c.rounds,
                     self.min_clients)

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

    def _messages(self, clients: list[int], message_type: str, config: dict) -> list[Message]:
        state = self.state

        def content(cid: int) -> RecordDict:
            download = self.coordinator.download(state, cid)
            extra = {"side-information": cid not in state.side_information} if message_type == MessageType.TRAIN else {}
            records = {"arrays": ArrayRecord(download.shared),
                       "config": ConfigRecord({**config, "experiment": self.token,
                                               "personal-round": state.last_trained.get(cid, -1), **extra})}
            if download.server_information:
                records["server"] = ArrayRecord(download.server_information)
            return RecordDict(records)

        return [Message(content(cid), dst_node_id=self.node_of[cid], message_type=message_type) for cid in clients]

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
        c = self.coordinator
        r = self._round(server_round)
        sampled = c.sample_clients(r)
        if server_round == 1:  # the first round of this Flower run (a resumed run waits as a fresh one)
            self.wait_for_clients(grid, list(range(c.num_users)), self.join_timeout)
        else:
            self.wait_for_clients(grid, sampled, self.rejoin_wait)
        self._record = {"sampled": sampled, "down": c.download_bytes(self.state)}
        if not c.trainable:
            return []
        present = [cid for cid in sampled if cid in self.node_of]
        if server_round == 1:
            logger.info("round %d/%d: %d client(s) train on their nodes (a node first encodes its clients' training "
                        "images, unless its feature cache holds them)", r + 1, int(c.cfg.OPTIM.ROUND), len(present))
        return self._messages(present, MessageType.TRAIN, {"round": r, "seed": c.seed})

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        c = self.coordinator
        r = self._round(server_round)
        updates = [self._update(m) for m in self._ok_replies(replies, "train")]
        clients = sorted(u.client for u in updates)
        if c.trainable and len(clients) < self.min_clients:
            raise NotEnoughClients(f"round {r + 1}: {len(clients)} client(s) finished training "
                                   f"(min-clients {self.min_clients}); finished rounds are in {c.output_dir}")
        record = c.aggregate(self.state, r, updates, clients, self._record["down"])
        record["missing_clients"] = sorted(set(self._record["sampled"]) - set(clients)) if c.trainable else []
        self._record = record
        summary = {k: record[k] for k in ("train_loss", "train_acc") if record[k] is not None}
        return ArrayRecord(self.state.global_state), MetricRecord(summary) if summary else None

    @staticmethod
    def _update(reply: Message) -> ClientUpdate:
        """A node's train reply as the update it carries (its personal tensors stay on the node)."""
        content = reply.content
        m = content["metrics"]
        side = dict(content["side"].to_torch_state_dict()) if "side" in content else None
        return ClientUpdate(client=int(m["client-id"]), shared=dict(content["arrays"].to_torch_state_dict()),
                            summary={"loss": float(m["loss"]), "acc": float(m["acc"])},
                            num_examples=int(m["num-examples"]), side_information=side)

    # ------------------------------------------------------------------ evaluation
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        r = self._round(server_round)
        if not self.coordinator.evaluates(r):
            return []
        return self._messages(sorted(self.node_of), MessageType.EVALUATE, {"round": r})

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        c, state = self.coordinator, self.state
        per_client = {}
        for reply in self._ok_replies(replies, "evaluate"):
            m = reply.content["metrics"]
            per_client[int(m["client-id"])] = {k: (float(m[k]) if k in m else None)
                                               for k in ("local", "macro_f1", "base", "novel")}
        record = self._record
        if per_client:
            record.update(c.evaluation_record(per_client))
            record["evaluated_clients"] = sorted(per_client)
            if not state.client_global:  # one global model: measured here, as the in-process loop does
                trainer = c.trainer
                record.update(self.runtime.global_model_metrics(state.global_state,
                                                                trainer.get_state(trainer.personal_keys())))
        record["seconds"] = time.time() - self._started
        c.end_round(state, record, extra={"engine": "flower", "experiment": self.token})
        if record.get("local") is not None:
            shown = ("local", "base", "novel", *SUMMARIES)
            return MetricRecord({k: record[k] for k in shown if record.get(k) is not None})
        return None
