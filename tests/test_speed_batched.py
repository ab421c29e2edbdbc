"""Batched clients (FED.BATCH_CLIENTS, federated/batched.py) give the tensors of sequential training."""
from __future__ import annotations

import os

import pytest
import torch
from fedtv_testing import fast_args
from yacs.config import CfgNode as CN

from federated.batched import MaskedOptimizer, batching_support, epoch_learning_rates
from federated.run import main


def _optim_cfg(name: str, **kw) -> CN:
    cfg = CN()
    cfg.NAME, cfg.LR, cfg.WEIGHT_DECAY, cfg.MOMENTUM = name, 0.1, 0.01, 0.9
    cfg.SGD_DAMPNING, cfg.SGD_NESTEROV, cfg.ADAM_BETA1, cfg.ADAM_BETA2, cfg.ADAM_EPS = 0.0, False, 0.9, 0.999, 1e-8
    cfg.STAGED_LR, cfg.LR_SCHEDULER, cfg.MAX_EPOCH, cfg.STEPSIZE, cfg.GAMMA = False, "cosine", 4, [-1], 0.1
    cfg.WARMUP_EPOCH, cfg.WARMUP_TYPE, cfg.WARMUP_RECOUNT = 0, "linear", True
    cfg.WARMUP_CONS_LR, cfg.WARMUP_MIN_LR = 1e-5, 1e-5
    for k, v in kw.items():
        cfg[k] = v
    return cfg


@pytest.mark.parametrize("name,extra", [("sgd", {}), ("sgd", {"SGD_NESTEROV": True}), ("sgd", {"SGD_DAMPNING": 0.3}),
                                        ("adam", {}), ("adamw", {}), ("amsgrad", {})])
def test_masked_optimizer_equals_torch_per_client(name, extra):
    """Row k follows torch's own optimiser run on client k alone, with clients stepping different numbers of times."""
    from dassl.optim import build_optimizer

    torch.manual_seed(0)
    cfg = _optim_cfg(name, **extra)
    k, steps = 3, [5, 2, 4]  # client 1 stops early, like a client with fewer batches
    init = torch.randn(k, 4, 3, dtype=torch.float64)
    grads = torch.randn(max(steps), k, 4, 3, dtype=torch.float64)
    stacked = init.clone().requires_grad_(True)
    masked = MaskedOptimizer([stacked], cfg, k)
    for s in range(max(steps)):
        stacked.grad = grads[s].clone()
        masked.step(torch.tensor([s < n for n in steps]), lr=0.1)
    for j in range(k):
        p = torch.nn.Parameter(init[j].clone())
        opt = build_optimizer([p], cfg)
        for s in range(steps[j]):
            p.grad = grads[s, j].clone()
            opt.step()
        torch.testing.assert_close(stacked[j].detach(), p.detach(), rtol=1e-12, atol=1e-12)


def test_epoch_learning_rates_follow_the_schedule():
    import math

    lrs = epoch_learning_rates(_optim_cfg("sgd"), 4)

    assert lrs == pytest.approx([0.1 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])


#: Dirichlet(0.1) clients with 13 / 10 / 15 / 10 training images: 4 / 3 / 4 / 3 batches of 4 per epoch.
UNEVEN = (["--num-users", "4", "--num-shots", "-1", "--beta", "0.1", "--train-batch-size", "4"],
          ["DATASET.PARTITION", "dirichlet", "FED.ZS_REFERENCE", "False", "OPTIM.MAX_EPOCH", "2", "OPTIM.LR", "0.05"])


def test_uneven_setting_has_clients_with_different_numbers_of_batches(tmp_path):
    from federated.cli import build_cfg, parse_args
    from federated.data import build_federated_data

    cfg = build_cfg(parse_args(fast_args(tmp_path, UNEVEN[0], UNEVEN[1])))
    batches = {-(-len(items) // 4) for items in build_federated_data(cfg).train}
    assert len(batches) > 1


def _final_states(tmp_path, trainer: str, batch: bool, opts: tuple[str, ...] = ()) -> tuple[dict, dict]:
    out = tmp_path / f"{trainer}-{batch}"
    results = main(fast_args(out, ["--trainer", trainer, *UNEVEN[0]],
                             [*UNEVEN[1], *opts, "FED.BATCH_CLIENTS", str(batch)]))
    return torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True), results


BATCHABLE = ["PromptFL", "CoOp", "PromptProx", "KgCoOp", "FedCoCoOp", "FedOTP", "FedPGP", "FedTV", "FedTPG",
             "PromptFolio", "FedPHA"]


#: Variants with their own code path in the mapped step: FedTPG's deep context (hooks on the text blocks).
BATCHABLE_VARIANTS = [("FedTPG", ("TRAINER.FEDTPG.D_CTX", "2"))]


@pytest.mark.parametrize("trainer,opts", [(t, ()) for t in BATCHABLE] + BATCHABLE_VARIANTS,
                         ids=[*BATCHABLE, *("-".join((t, *o)) for t, o in BATCHABLE_VARIANTS)])
def test_batched_clients_equal_sequential(tmp_path, trainer, opts):
    """Clients with different numbers of batches, 2 rounds x 2 epochs, momentum SGD: the same tensors and
    the same logged losses (fp32 on CPU: only the summation order differs)."""
    seq, r_seq = _final_states(tmp_path, trainer, False, opts)
    bat, r_bat = _final_states(tmp_path, trainer, True, opts)
    assert r_bat["execution"]["batched_clients"] and not r_seq["execution"]["batched_clients"]
    for key in seq["global"]:
        torch.testing.assert_close(bat["global"][key], seq["global"][key], rtol=1e-4, atol=2e-5)
    for p_seq, p_bat in zip(seq["personal"], bat["personal"], strict=True):
        for key in p_seq:
            torch.testing.assert_close(p_bat[key], p_seq[key], rtol=1e-4, atol=2e-5)
    for a, b in zip(r_seq["rounds"], r_bat["rounds"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["train_acc"] == pytest.approx(a["train_acc"], abs=1e-6)
    # training moved the tensors far more than the tolerance (the comparison is not vacuous)
    first = next(iter({**seq["global"], **seq["personal"][0]}.items()))
    moved = float(first[1].abs().max())
    assert moved > 1e-3


def test_unsupported_trainers_are_named(tmp_path):
    """A trainer with a trainable text tower is trained one after another, with the reason logged."""
    from dassl.engine import build_trainer
    from federated.cli import build_cfg, parse_args

    cfg = build_cfg(parse_args(fast_args(tmp_path, ["--trainer", "PromptFL"], ["OPTIM.NAME", "rmsprop"])))
    trainer = build_trainer(cfg, classnames=["red circle", "blue square"])
    assert "rmsprop" in batching_support(trainer)


def test_a_loss_vmap_cannot_map_falls_back_to_sequential_training(tmp_path, monkeypatch, caplog):
    """A compute_loss with a data-dependent Python branch cannot be mapped over clients: the server says
    why and trains the clients one after another, with the same result as asking for sequential training."""
    from trainers.coop import PromptFL

    original = PromptFL.compute_loss

    def branching(self, features, labels):
        loss, logits, extra = original(self, features, labels)
        if loss.item() > 1e9:  # a host sync on a mapped value: vmap refuses it
            loss = loss * 0
        return loss, logits, extra

    monkeypatch.setattr(PromptFL, "compute_loss", branching)
    seq, _ = _final_states(tmp_path, "PromptFL", False)
    with caplog.at_level("WARNING", logger="fedtv.server"):
        fallback, results = _final_states(tmp_path, "PromptFL", True)
    assert "cannot be mapped over clients" in caplog.text
    assert not results["execution"]["batched_clients"]
    for key in seq["global"]:
        torch.testing.assert_close(fallback["global"][key], seq["global"][key])


@pytest.mark.parametrize("trainer", ["PromptFL", "FedTV"])
def test_bf16_autocast_path_batched_equals_sequential(tmp_path, monkeypatch, trainer):
    """The GPU's mixed-precision path (PREC bf16: autocast around the vmapped step), exercised with CPU
    autocast: batched and sequential training agree within bf16 rounding (no GPU in CI)."""
    from trainers.base import FederatedTrainer

    monkeypatch.setattr(FederatedTrainer, "precision", property(lambda self: "bf16"))
    runs = {}
    for batch in (False, True):
        results = main(fast_args(tmp_path / str(batch), ["--trainer", trainer],
                                 ["FED.BATCH_CLIENTS", str(batch), "OPTIM.LR", "0.01"]))
        assert results["execution"]["precision"] == "bf16"
        assert results["execution"]["batched_clients"] == batch
        runs[batch] = [r["train_loss"] for r in results["rounds"]]
    assert runs[True] == pytest.approx(runs[False], rel=2e-2)
    assert runs[False][-1] < runs[False][0]  # it trains


def test_clients_in_chunks_equal_one_pass(tmp_path):
    """FED.BATCH_CLIENTS_CHUNK bounds the clients per vmapped pass (memory); the result does not change."""
    one, _ = _final_states(tmp_path / "one", "FedPGP", True)
    out = tmp_path / "chunks"
    results = main(fast_args(out, ["--trainer", "FedPGP", *UNEVEN[0]],
                             [*UNEVEN[1], "FED.BATCH_CLIENTS", "True", "FED.BATCH_CLIENTS_CHUNK", "3"]))
    chunked = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert results["execution"]["batched_clients"]
    for key in one["global"]:
        torch.testing.assert_close(chunked["global"][key], one["global"][key], rtol=1e-4, atol=2e-5)
    for p_one, p_chunk in zip(one["personal"], chunked["personal"], strict=True):
        for key in p_one:
            torch.testing.assert_close(p_chunk[key], p_one[key], rtol=1e-4, atol=2e-5)
    from federated.errors import ConfigError

    with pytest.raises(ConfigError, match="BATCH_CLIENTS_CHUNK must be >= 0"):
        main(fast_args(tmp_path / "bad", ["--trainer", "FedPGP"], ["FED.BATCH_CLIENTS_CHUNK", "-1"]))
