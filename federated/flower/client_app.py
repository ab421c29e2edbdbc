"""The FedTV ClientApp: one Flower node = one FedTV client.

Messages (``content`` keys):

* ``query``: reply ``config["client-id"]`` and ``config["num-examples"]`` so the server can map its
  node ids to client ids (the node's client id comes from its ``--node-config``).
* ``train``: ``arrays`` = the shared tensors this client downloads, ``server`` (only for a method with a
  server step, e.g. pFedMoAP) = its server information, ``config`` = ``round`` (0-based),
  ``seed``, ``experiment`` (the token that keys the node's personal-state store) and
  ``personal-round`` (whose personal state to start from, ``node.PersonalStore``) and
  ``side-information`` (whether to send the trainer's ``side_information`` of this client: the first
  time it trains, e.g. CE-LoRA's feature statistics; replied as ``side``). The node adds
  that personal state, trains through
  ``ClientRuntime.train_client`` (seeded from ``(SEED, round, client)``, the same loader as the
  in-process loop), keeps the new personal tensors as this round's (with ``FED.CLIENT_OPTIMIZER_STATE`` also
  the client's optimiser state, handed back to the trainer before its next training), and replies ``arrays`` =
  **only the shared tensors** and ``metrics`` = ``num-examples``, ``loss``, ``acc``, ``client-id``.
* ``evaluate``: ``arrays`` and ``config`` as in ``train``; replies ``metrics`` with this client's Local accuracy and
  macro-F1 on its own test split and its Base / Novel accuracy (``ClientRuntime.evaluate_client``);
  a value that is not measured is absent.

``make_client_app(cfg_text)`` fixes the config (simulation from the command line); the module-level
``app`` (``flwr run``) builds it from the run config and the node config.
"""
from __future__ import annotations

import os

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from federated.flower.node import Experiment, PersonalStore, experiment
from federated.flower.settings import NodeIdentity, cfg_from_run_config, cfg_from_text, node_identity
from federated.run_state import Download

EVAL_KEYS = ("local", "macro_f1", "base", "novel")


def _setup(context: Context, cfg_text: str | None) -> tuple[Experiment, NodeIdentity]:
    ident = node_identity(dict(context.node_config))
    if cfg_text is not None:
        cfg = cfg_from_text(cfg_text)
    else:
        cfg = cfg_from_run_config(dict(context.run_config), ident.data_root, ident.clip_weights)
    exp = experiment(cfg)
    if not 0 <= ident.client_id < exp.data.num_users:
        raise ValueError(f"node client-id {ident.client_id} is outside 0..{exp.data.num_users - 1} "
                         f"(the run has {exp.data.num_users} clients)")
    return exp, ident


def _store(context: Context, exp: Experiment, ident: NodeIdentity, config) -> PersonalStore:
    return PersonalStore(context, ident.client_id, ident.state_dir or os.path.join(exp.cfg.OUTPUT_DIR, "flower_nodes"),
                         str(_setting(config, "experiment")))


def _setting(config, key: str):
    if key not in config:
        raise ValueError(f"the server's message has no '{key}': the ServerApp and this node run different "
                         "FedTV versions")
    return config[key]


def _download(msg: Message, cid: int) -> Download:
    content = msg.content
    info = dict(content["server"].to_torch_state_dict()) if "server" in content else {}
    return Download(cid, dict(content["arrays"].to_torch_state_dict()), info)


def _query(msg: Message, context: Context, cfg_text: str | None) -> Message:
    exp, ident = _setup(context, cfg_text)
    reply = ConfigRecord({"client-id": ident.client_id, "num-examples": len(exp.data.train[ident.client_id])})
    return Message(RecordDict({"config": reply}), reply_to=msg)


def _train(msg: Message, context: Context, cfg_text: str | None) -> Message:
    exp, ident = _setup(context, cfg_text)
    config = msg.content["config"]
    round_idx, seed = int(_setting(config, "round")), int(_setting(config, "seed"))
    if seed != exp.runtime.seed:
        raise ValueError(f"the server trains with SEED {seed}, this node's config has SEED {exp.runtime.seed}")
    t, cid = exp.trainer, ident.client_id
    store = _store(context, exp, ident, config)
    initial, personal_round = t.initial_personal_state(cid), int(_setting(config, "personal-round"))
    personal = store.load(initial, personal_round)
    if t.client_optimizer_state:  # the client's momentum of its last training, not this process's trainer's
        t.set_client_optimizer_tensors(cid, store.load_optimizer(initial, personal_round))
    update = exp.runtime.train_client(_download(msg, cid), personal, round_idx,
                                      bool(_setting(config, "side-information")))
    store.save(update.personal, round_idx, update.optimizer)
    metrics = MetricRecord({"num-examples": update.num_examples, "client-id": cid,
                            "loss": float(update.summary.get("loss", float("nan"))),
                            "acc": float(update.summary.get("acc", float("nan")))})
    content = {"arrays": ArrayRecord(update.shared), "metrics": metrics}
    if update.side_information is not None:
        content["side"] = ArrayRecord(update.side_information)
    return Message(RecordDict(content), reply_to=msg)


def _evaluate(msg: Message, context: Context, cfg_text: str | None) -> Message:
    exp, ident = _setup(context, cfg_text)
    cid = ident.client_id
    config = msg.content["config"]
    personal = _store(context, exp, ident, config).load(exp.trainer.initial_personal_state(cid),
                                                        int(_setting(config, "personal-round")))
    result = exp.runtime.evaluate_client(_download(msg, cid), personal)
    metrics = MetricRecord({"client-id": cid, **{k: float(result[k]) for k in EVAL_KEYS if result[k] is not None}})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def make_client_app(cfg_text: str | None = None) -> ClientApp:
    """A ClientApp for the config ``cfg_text`` (YAML), or, with None, for the run config of ``flwr run``."""
    client = ClientApp()

    @client.query()
    def query(msg: Message, context: Context) -> Message:
        return _query(msg, context, cfg_text)

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        return _train(msg, context, cfg_text)

    @client.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return _evaluate(msg, context, cfg_text)

    return client


app = make_client_app()
