"""The fast paths on a real GPU (``-m cuda``; skipped where CUDA is absent, as in CI).

Everything else in the suite also runs on CUDA when a GPU is present (``USE_CUDA`` defaults to True);
these tests pin what only a GPU exercises: fp32 batched = sequential on the device, bf16 autocast
within rounding, fp16 with gradient scaling, image features encoded on the device, chunked batching,
the trainers with their own text/image passes for one round each, and Flower's fractional GPUs.
``bench/gpu_check.sh`` runs this file first.
"""
from __future__ import annotations

import os

import pytest
import torch
from fedtv_testing import fast_args

from federated.run import main

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

#: Dirichlet clients of different sizes (different numbers of batches), 2 rounds x 2 epochs.
UNEVEN = (["--num-users", "4", "--num-shots", "-1", "--beta", "0.1", "--train-batch-size", "4"],
          ["DATASET.PARTITION", "dirichlet", "FED.ZS_REFERENCE", "False", "OPTIM.MAX_EPOCH", "2",
           "OPTIM.LR", "0.05", "USE_CUDA", "True"])


def _run(out, trainer: str, opts: list[str] = ()) -> tuple[dict, dict]:
    results = main(fast_args(out, ["--trainer", trainer, *UNEVEN[0]], [*UNEVEN[1], *opts]))
    state = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True, map_location="cpu")
    return state, results


def _assert_states_close(a: dict, b: dict, rtol: float, atol: float) -> None:
    for key in a["global"]:
        torch.testing.assert_close(b["global"][key], a["global"][key], rtol=rtol, atol=atol)
    for pa, pb in zip(a["personal"], b["personal"], strict=True):
        for key in pa:
            torch.testing.assert_close(pb[key], pa[key], rtol=rtol, atol=atol)


@pytest.mark.parametrize("trainer", ["PromptFL", "CoOp", "KgCoOp", "FedCoCoOp", "FedOTP", "FedPGP", "FedTV"])
def test_batched_equals_sequential_fp32_on_cuda(tmp_path, trainer):
    prec = [] if trainer not in ("FedCoCoOp", "FedOTP") else [f"TRAINER.{_node(trainer)}.PREC", "fp32"]
    seq, r_seq = _run(tmp_path / "seq", trainer, ["FED.BATCH_CLIENTS", "False", *prec])
    bat, r_bat = _run(tmp_path / "bat", trainer, ["FED.BATCH_CLIENTS", "True", *prec])
    assert r_seq["execution"]["device"].startswith("cuda") and r_bat["execution"]["batched_clients"]
    _assert_states_close(seq, bat, rtol=1e-4, atol=5e-5)
    for a, b in zip(r_seq["rounds"], r_bat["rounds"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)


@pytest.mark.parametrize("trainer", ["PromptFL", "FedPGP", "FedTV"])
def test_bf16_batched_equals_sequential_within_rounding(tmp_path, trainer):
    opts = [f"TRAINER.{_node(trainer)}.PREC", "bf16", "OPTIM.LR", "0.01"]
    losses = {}
    for batch in (False, True):
        _, res = _run(tmp_path / str(batch), trainer, [*opts, "FED.BATCH_CLIENTS", str(batch)])
        assert res["execution"]["precision"] == "bf16" and res["execution"]["batched_clients"] == batch
        losses[batch] = [r["train_loss"] for r in res["rounds"]]
    assert losses[True] == pytest.approx(losses[False], rel=2e-2)
    assert losses[False][-1] < losses[False][0]


def test_fp16_trains_with_gradient_scaling_one_client_after_another(tmp_path):
    """The published fp16 configs (FedOTP, CoCoOp, MaPLe): GradScaler, clients sequential, finite losses."""
    _, res = _run(tmp_path, "FedCoCoOp", ["TRAINER.FEDCOCOOP.PREC", "fp16"])
    assert res["execution"]["precision"] == "fp16" and not res["execution"]["batched_clients"]
    losses = [r["train_loss"] for r in res["rounds"]]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_image_features_encoded_on_the_device_match_the_cpu(tmp_path):
    """The feature cache is filled by the GPU's image tower: zero-shot accuracy equals the CPU's
    (same weights and images; fp32 on both), and the run trains from the cache."""
    flags = ["--trainer", "PromptFL"]
    opts = ["FED.ZS_REFERENCE", "True", "OPTIM.ROUND", "1"]
    gpu = main(fast_args(tmp_path / "gpu", flags, [*opts, "USE_CUDA", "True", "FED.CACHE_DIR", str(tmp_path / "cg")]))
    cpu = main(fast_args(tmp_path / "cpu", flags, [*opts, "USE_CUDA", "False", "FED.CACHE_DIR", str(tmp_path / "cc")]))
    assert gpu["execution"]["device"].startswith("cuda") and cpu["execution"]["device"] == "cpu"
    assert gpu["execution"]["feature_cache"]
    for key in ("local", "base", "novel"):
        assert gpu["zero_shot"][key] == pytest.approx(cpu["zero_shot"][key], abs=1.0)


def test_chunked_batching_equals_one_pass_on_cuda(tmp_path):
    one, _ = _run(tmp_path / "one", "FedPGP", ["FED.BATCH_CLIENTS", "True"])
    chunked, res = _run(tmp_path / "chunk", "FedPGP", ["FED.BATCH_CLIENTS", "True", "FED.BATCH_CLIENTS_CHUNK", "3"])
    assert res["execution"]["batched_clients"]
    _assert_states_close(one, chunked, rtol=1e-4, atol=5e-5)


@pytest.mark.parametrize("trainer", ["FedOTP", "FedCoCoOp", "FedMaPLe", "FLoRA", "CELoRA", "FedFFT", "FedAA"])
def test_one_round_of_every_kind_of_trainer_on_cuda(tmp_path, trainer):
    res = main(fast_args(tmp_path, ["--trainer", trainer, "--rounds", "1"], ["USE_CUDA", "True"]))
    assert res["execution"]["device"].startswith("cuda")
    assert res["final"]["local"] is not None and torch.isfinite(torch.tensor(res["rounds"][-1]["train_loss"]))


def test_flower_simulation_gives_each_client_a_gpu_fraction(tmp_path):
    pytest.importorskip("flwr", reason="Flower is optional")
    from federated.flower.simulation import gpu_share

    args = fast_args(tmp_path, ["--engine", "flower-sim", "--trainer", "PromptFL"], ["USE_CUDA", "True"])
    res = main(args)
    assert gpu_share(_cfg(args), 3) == pytest.approx(1 / 3)
    assert len(res["rounds"]) == 2 and res["final"]["local"] is not None


def _cfg(args: list[str]):
    from federated.cli import build_cfg, parse_args

    return build_cfg(parse_args(args))


def _node(trainer: str) -> str:
    import trainers  # noqa: F401  (registers the trainers)
    from dassl.engine import TRAINER_REGISTRY

    return TRAINER_REGISTRY.get(trainer).CFG_NODE
