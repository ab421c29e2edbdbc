"""The method contract (trainers/method.py): generic config rules, the SEQUENTIAL declaration behind
batching (and tools/gpu_time.py), and a new method written as one file, trained batched and sequential."""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch
from fedtv_testing import fast_args

from dassl.engine import TRAINER_REGISTRY
from federated.batched import batching_support
from federated.errors import ConfigError
from federated.run import main
from tools.gpu_time import METHOD_COSTS
from tools.method_table import build_default_trainer
from trainers.method import Range, check_rules, rule_error

NEW_METHOD = '''
"""FedMini: a shared context learned with cross-entropy plus W * ||ctx||^2 (a method in one file)."""
import torch.nn.functional as F

from dassl.engine import TRAINER_REGISTRY
from trainers.method import Range
from trainers.prompt_trainer import PromptTrainer, prompt_cfg_node


@TRAINER_REGISTRY.register()
class FedMini(PromptTrainer):
    """Shared context, CE + W * ||ctx||^2."""

    CFG_NODE = "FEDMINI"
    SHARED = ("prompt_learner.ctx",)
    CFG_RULES = {"W": Range(0), "LOSS": ("ce",)}

    @classmethod
    def cfg_defaults(cls):
        node = prompt_cfg_node(n_ctx=4)
        node.W = 0.1
        node.LOSS = "ce"
        return node

    def compute_loss(self, image_features, labels):
        logits = self.model.logits(image_features, self.model.eval_context())
        ce = F.cross_entropy(logits, labels)
        reg = self.model.prompt_learner.ctx.pow(2).sum()
        return ce + float(self.tcfg.W) * reg, logits, {"reg": reg.detach()}
'''


@pytest.fixture
def new_method(tmp_path):
    path = tmp_path / "fedmini.py"
    path.write_text(NEW_METHOD)
    spec = importlib.util.spec_from_file_location("fedmini", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fedmini"] = module
    spec.loader.exec_module(module)
    yield module.FedMini
    TRAINER_REGISTRY._obj_map.pop("FedMini")
    del sys.modules["fedmini"]


#: 4 Dirichlet clients with different numbers of batches, 2 rounds x 2 local epochs, momentum SGD.
UNEVEN = (["--num-users", "4", "--num-shots", "-1", "--beta", "0.1", "--train-batch-size", "4", "--trainer", "FedMini"],
          ["DATASET.PARTITION", "dirichlet", "FED.ZS_REFERENCE", "False", "OPTIM.MAX_EPOCH", "2", "OPTIM.LR", "0.05",
           "OPTIM.MOMENTUM", "0.9"])


def test_a_new_method_in_one_file_trains_batched_and_sequential_alike(tmp_path, new_method):
    states, results = {}, {}
    for batch in (False, True):
        out = tmp_path / str(batch)
        results[batch] = main(fast_args(out, UNEVEN[0], [*UNEVEN[1], "FED.BATCH_CLIENTS", str(batch)]))
        states[batch] = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert results[True]["execution"]["batched_clients"] and not results[False]["execution"]["batched_clients"]
    assert set(states[True]["global"]) == {"prompt_learner.ctx"}
    torch.testing.assert_close(states[True]["global"]["prompt_learner.ctx"],
                               states[False]["global"]["prompt_learner.ctx"], rtol=1e-4, atol=2e-5)
    for a, b in zip(results[False]["rounds"], results[True]["rounds"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    assert results[True]["params"]["shared"] == results[True]["params"]["total"] > 0


def test_a_new_methods_rules_and_defaults_come_from_its_declaration(tmp_path, new_method):
    with pytest.raises(ConfigError, match=r"TRAINER.FEDMINI.W must be >= 0, got -1.0"):
        main(fast_args(tmp_path, ["--trainer", "FedMini"], ["TRAINER.FEDMINI.W", "-1"]))
    with pytest.raises(ConfigError, match=r"TRAINER.FEDMINI.LOSS must be one of \('ce',\), got 'mse'"):
        main(fast_args(tmp_path, ["--trainer", "FedMini"], ["TRAINER.FEDMINI.LOSS", "mse"]))
    assert not os.path.exists(tmp_path / "results.json")


def test_rule_messages():
    node = {"A": 0.0, "B": 2, "C": "x", "D": 1.5}
    assert rule_error("N", "A", Range(0, low_open=True), node) == "N.A must be > 0, got 0.0"
    assert rule_error("N", "B", Range(1), node) is None
    assert rule_error("N", "B", Range(0, 1, low_open=True), node) == "N.B must be in (0, 1], got 2"
    assert rule_error("N", "C", ("y", "z"), node) == "N.C must be one of ('y', 'z'), got 'x'"
    assert rule_error("N", "D", lambda n: "N.D too big" if n["D"] > 1 else None, node) == "N.D too big"
    assert rule_error("N", "C", Range(0), node) == "N.C must be >= 0, got x"  # not a number


def test_rules_of_a_base_apply_to_subclasses(tmp_path):
    from federated.cli import build_cfg, parse_args

    cfg = build_cfg(parse_args(fast_args(tmp_path, ["--trainer", "FedPGP"], ["TRAINER.FEDPGP.TEMP", "0"])))
    with pytest.raises(ConfigError, match="TRAINER.FEDPGP.TEMP must be > 0, got 0.0"):
        check_rules(TRAINER_REGISTRY.get("FedPGP"), cfg)


@pytest.mark.parametrize("name", TRAINER_REGISTRY.registered_names())
def test_sequential_declaration_is_what_batching_and_the_cost_model_use(name):
    """Default config on the CPU: the engine batches exactly the methods that do not declare SEQUENTIAL,
    and tools/gpu_time.py's cost model agrees (it reads the same declaration)."""
    cls = TRAINER_REGISTRY.get(name)
    reason = batching_support(build_default_trainer(name))
    assert (reason is None) == (not cls.SEQUENTIAL), reason
    if cls.SEQUENTIAL:
        assert cls.SEQUENTIAL in reason
    if name in METHOD_COSTS:
        assert METHOD_COSTS[name].batchable == (not cls.SEQUENTIAL)


@pytest.mark.parametrize("name", TRAINER_REGISTRY.registered_names())
def test_a_method_with_an_end_of_training_step_declares_sequential(name):
    """``start_local_training`` / ``finish_local_training`` run in the sequential loop only (the batched engine
    trains stacked clients and never calls them): a method that gives one a body must declare SEQUENTIAL, or
    batched clients would silently skip its step (e.g. FedMGP's group sampling, pFedMoAP's published gating)."""
    from trainers.base import FederatedTrainer

    cls = TRAINER_REGISTRY.get(name)
    for hook in ("start_local_training", "finish_local_training"):
        if getattr(cls, hook) is not getattr(FederatedTrainer, hook):
            assert cls.SEQUENTIAL, f"{name} overrides {hook} but does not declare SEQUENTIAL"
    # client-state buffers (CLIENT_STATE) are not stacked by the batched engine either
    assert not cls.CLIENT_STATE or cls.SEQUENTIAL, f"{name} declares CLIENT_STATE but not SEQUENTIAL"


@pytest.mark.parametrize("declared", [False, True])
def test_both_engines_hand_over_the_round_context_and_the_round_start_state_only_when_declared(
        tmp_path, new_method, declared):
    """The round context (client, 1-based round, and with NEEDS_ROUND_START_STATE the downloaded shared
    tensors) is what the sequential loop and the batched engine give ``compute_loss``; nothing else travels."""
    from federated.batched import BatchedClients
    from federated.cli import build_cfg, parse_args
    from federated.data import build_federated_data
    from trainers.method import RoundContext

    seen = []

    class Recording(new_method):
        NEEDS_ROUND_START_STATE = declared

        def compute_loss(self, image_features, labels):
            c = self.round_context
            seen.append((c.client, c.round, {k: tuple(v.shape) for k, v in c.round_start.items()}))
            return super().compute_loss(image_features, labels)

    cfg = build_cfg(parse_args(fast_args(tmp_path, ["--trainer", "FedMini"])))
    trainer = Recording(cfg, classnames=build_federated_data(cfg).classnames)
    ctx = trainer.model.prompt_learner.ctx
    dim = trainer.model.eval_context().shape[1]
    loader = [{"feat": torch.randn(4, dim), "label": torch.arange(4) % trainer.num_classes}]
    trainer.local_train(loader, 1, RoundContext(client=3, round=2))
    start = {"prompt_learner.ctx": ctx.detach().clone()}
    BatchedClients(trainer).train([start, start], [loader, loader], 1,
                                  [RoundContext(client=0, round=5), RoundContext(client=1, round=5)])
    anchors = {"prompt_learner.ctx": tuple(ctx.shape)} if declared else {}
    # sequential: the client's own context; batched: one mapped call over the clients (each sees its row)
    assert seen == [(3, 2, anchors), (None, 5, anchors)]
    assert trainer.round_context.round_start == {}  # the anchors are not kept after training
