"""A process that trains only some clients (a Flower node) caches only their training features, and
trains them exactly as the in-process run does (their cached views are seeded by the items' positions
in the run's item list, not in the node's)."""
from __future__ import annotations

import pytest
import torch
from fedtv_testing import fast_args

from dassl.engine import build_trainer
from federated.cli import build_cfg, parse_args
from federated.data import build_federated_data
from federated.errors import ConfigError
from federated.run_state import Download
from federated.runtime import ClientRuntime


def test_a_node_caches_only_its_own_clients_and_trains_them_identically(tmp_path):
    opts = ["FED.CACHE_DIR", str(tmp_path / "cache")]
    cfg = build_cfg(parse_args(fast_args(tmp_path, ["--trainer", "FedPGP"], opts)))
    data = build_federated_data(cfg)
    trainer = build_trainer(cfg, classnames=data.classnames)
    start = trainer.get_state(trainer.shared_keys() + trainer.personal_keys())
    everyone = ClientRuntime(cfg, trainer, data)
    node = ClientRuntime(cfg, trainer, data, clients=[])
    assert node.feature_cache is None and node._client_caches == {}  # nothing encoded before training
    trained = {}
    shared, personal = trainer.shared_keys(), trainer.personal_keys()
    for name, runtime in (("in-process", everyone), ("node", node)):
        update = runtime.train_client(Download(1, {k: start[k] for k in shared}), {k: start[k] for k in personal}, 0)
        trained[name] = (update.summary, trainer.get_state(list(start)))
    assert list(node._client_caches) == [1]
    assert node._client_caches[1].items == data.train[1] and len(data.train[1]) < len(everyone.feature_cache.items)
    assert trained["node"][0] == trained["in-process"][0]
    for key, value in trained["in-process"][1].items():
        assert torch.equal(trained["node"][1][key], value), key
    assert not torch.equal(trained["node"][1]["prompt_learner.sigma"], start["prompt_learner.sigma"])


def test_a_process_that_keeps_its_trainer_starts_every_run_afresh(tmp_path):
    """A Flower ServerApp or node keeps its experiment between runs in one process: building a client's
    feature cache in the middle of a seeded training leaves the torch RNG where it was, and a later run
    starts from the freshly built model's shared tensors, not from the last run's trained ones."""
    opts = ["FED.CACHE_DIR", str(tmp_path / "cache")]
    cfg = build_cfg(parse_args(fast_args(tmp_path, ["--trainer", "FedPGP"], opts)))
    data = build_federated_data(cfg)
    trainer = build_trainer(cfg, classnames=data.classnames)
    initial_shared = trainer.get_state(trainer.shared_keys())
    start = trainer.get_state(trainer.shared_keys() + trainer.personal_keys())
    node = ClientRuntime(cfg, trainer, data, clients=[])
    torch.manual_seed(123)
    before = torch.get_rng_state()
    assert node.train_cache(0) is not None  # encodes client 0's views now
    assert torch.equal(torch.get_rng_state(), before)
    node.train_client(Download(0, {k: start[k] for k in trainer.shared_keys()}),
                      {k: start[k] for k in trainer.personal_keys()}, 0)
    assert any(not torch.equal(trainer.get_state([k])[k], v) for k, v in initial_shared.items())  # it trained
    for key, value in trainer.initial_shared_state().items():
        assert torch.equal(value, initial_shared[key]), key


def test_a_node_refuses_the_published_shared_optimizer(tmp_path):
    """``FED.SHARED_OPTIMIZER`` (the published codes' one optimiser carried from client to client in one process)
    would pass between other clients on a Flower simulation actor, which serves any client, and be lost in a
    deployment's per-message process: a Flower node refuses it in one line; the in-process engine runs it. A
    client's own kept optimiser state (``FED.CLIENT_OPTIMIZER_STATE``) travels with the client: accepted."""
    cfg = build_cfg(parse_args(fast_args(tmp_path, ["--trainer", "PromptFL"], ["FED.SHARED_OPTIMIZER", "True"])))
    data = build_federated_data(cfg)
    trainer = build_trainer(cfg, classnames=data.classnames)
    ClientRuntime(cfg, trainer, data)  # in process: accepted
    refusal = (r"^PromptFL: FED.SHARED_OPTIMIZER True \(.*; set it False on Flower\) runs in process only: "
               r"use --engine inprocess$")
    with pytest.raises(ConfigError, match=refusal):
        ClientRuntime(cfg, trainer, data, clients=[])
    cfg = build_cfg(parse_args(fast_args(tmp_path / "kept", ["--trainer", "PromptFL"],
                                         ["FED.CLIENT_OPTIMIZER_STATE", "True"])))
    ClientRuntime(cfg, build_trainer(cfg, classnames=data.classnames), data, clients=[])
