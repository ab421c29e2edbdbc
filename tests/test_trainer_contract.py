"""Every registered trainer: the engines own its loop and optimiser, the server receives only shared
tensors (the shared / personal split itself: tests/test_method_table.py)."""
import pytest
import torch

from dassl.engine import TRAINER_REGISTRY, build_trainer
from federated.cli import build_cfg, parse_args
from federated.data import build_federated_data
from federated.run import main
from federated.server import FederatedServer
from tests.fedtv_testing import fast_args


def _setup(tmp_path, trainer, *opts):
    args = parse_args(fast_args(tmp_path, ["--trainer", trainer, "--rounds", "1"], list(opts)))
    cfg = build_cfg(args)
    data = build_federated_data(cfg)
    return cfg, data, build_trainer(cfg, classnames=data.classnames)


LOOP = ("local_train", "forward_backward", "build_optimizers", "run_epoch", "train")


@pytest.mark.parametrize("name", TRAINER_REGISTRY.registered_names())
def test_the_engines_own_the_loop_and_the_optimiser(name):
    """A method declares (SHARED, CFG_RULES, SEQUENTIAL, build_model, compute_loss ...); it does not
    replace the training loop, whose sequential and batched versions must give the same results."""
    from trainers.base import FederatedTrainer

    cls = TRAINER_REGISTRY.get(name)
    assert [m for m in LOOP if getattr(cls, m) is not getattr(FederatedTrainer, m)] == []


@pytest.mark.parametrize("name", TRAINER_REGISTRY.registered_names())
def test_server_only_receives_shared_tensors(tmp_path, name):
    cfg, data, trainer = _setup(tmp_path, name)
    server = FederatedServer(cfg, trainer, data)
    seen = []
    inner = server.coordinator.aggregator

    def spy(uploads, sizes, previous, client_ids=None, **context):
        seen.extend(uploads)
        return inner(uploads, sizes, previous, client_ids, **context)

    server.coordinator.aggregator = spy
    server.run()
    personal = set(trainer.personal_keys())
    for upload in seen:
        assert set(upload) == set(trainer.shared_keys())
        assert not set(upload) & personal


def test_coop_clients_keep_their_own_prompts(tmp_path):
    """CoOp is local: after a round every client has its own context, and evaluating a client
    restores exactly its own tensors (nothing leaks through the one shared model)."""
    cfg, data, trainer = _setup(tmp_path, "CoOp")
    server = FederatedServer(cfg, trainer, data)
    server.run()
    ckpt = torch.load(server.checkpoint_path, weights_only=True)
    ctx = [p["prompt_learner.ctx"] for p in ckpt["personal"]]
    assert ckpt["global"] == {}
    assert not torch.equal(ctx[0], ctx[1]) and not torch.equal(ctx[1], ctx[2])
    trainer.load_state(ckpt["personal"][1])
    assert torch.equal(trainer.get_state(["prompt_learner.ctx"])["prompt_learner.ctx"], ctx[1])


def test_promptfl_clients_share_the_averaged_context(tmp_path):
    cfg, data, trainer = _setup(tmp_path, "PromptFL")
    server = FederatedServer(cfg, trainer, data)
    server.run()
    ckpt = torch.load(server.checkpoint_path, weights_only=True)
    assert set(ckpt["global"]) == {"prompt_learner.ctx"}
    assert all(p == {} for p in ckpt["personal"])
    weights = ckpt["results"]["rounds"][0]["aggregation"]["weights"]
    assert sum(weights) == pytest.approx(1.0)


def _momentum_at_each_client_start(tmp_path, monkeypatch, shared: bool) -> list[bool]:
    """Run PromptFL (SGD with momentum) and record, at the start of each client's local training,
    whether the optimiser it trains with already holds momentum buffers."""
    from trainers.base import FederatedTrainer

    seen = []
    original = FederatedTrainer.train

    def spying(self, start_epoch, max_epoch):
        optim = self._optims["model"]
        seen.append((id(optim), any(optim.state.get(p) for g in optim.param_groups for p in g["params"])))
        return original(self, start_epoch, max_epoch)

    monkeypatch.setattr(FederatedTrainer, "train", spying)
    main(fast_args(tmp_path / str(shared), ["--trainer", "PromptFL", "--rounds", "2"],
                   ["FED.SHARED_OPTIMIZER", str(shared), "OPTIM.MOMENTUM", "0.9", "FED.BATCH_CLIENTS", "False"]))
    return seen


def test_optimiser_is_fresh_per_client_unless_the_published_shared_optimiser_is_asked_for(tmp_path, monkeypatch):
    fresh = _momentum_at_each_client_start(tmp_path, monkeypatch, False)
    assert len(fresh) == 6 and not any(has_momentum for _, has_momentum in fresh)
    shared = _momentum_at_each_client_start(tmp_path, monkeypatch, True)
    assert len({optim_id for optim_id, _ in shared}) == 1  # one optimiser for every client and round
    assert [has_momentum for _, has_momentum in shared] == [False] + [True] * 5  # momentum carried over


def test_training_mode_keeps_frozen_batchnorm_in_eval_mode(tmp_path):
    """The RN50 image tower's BatchNorm is frozen: training must neither normalise with batch statistics nor
    move the running statistics of the CLIP every client shares (tests/test_real_backbones.py runs RN50)."""
    _, _, trainer = _setup(tmp_path, "CoOp")
    trainer.model.add_module("frozen_bn", torch.nn.BatchNorm1d(4).requires_grad_(False))
    trainer.model.add_module("trained_bn", torch.nn.BatchNorm1d(4))
    trainer.set_model_mode("train")
    assert trainer.model.training and trainer.model.trained_bn.training and not trainer.model.frozen_bn.training
    trainer.set_model_mode("test")
    assert not trainer.model.trained_bn.training
