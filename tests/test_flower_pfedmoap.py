"""pFedMoAP on the Flower simulation against the in-process loop: the ServerApp keeps every client's
latest prompt (the coordinator's server step) and each node receives its own experts in a ``server``
record next to the shared tensors, so round 2 (the first with experts) is the same in both engines.
Tolerances as in test_flower_simulation.py."""
import pytest
import torch

pytest.importorskip("flwr", reason="Flower is optional: pip install -r requirements-flower.txt")

from tests.fedtv_testing import in_process_and_flower  # noqa: E402

ARGS = ["--trainer", "pFedMoAP", "--lr", "0.05"]
OPTS = ["TRAINER.PFEDMOAP.EMBED_DIM", "16", "TRAINER.PFEDMOAP.NUM_EXPERTS", "3"]


def test_experts_reach_the_nodes_and_every_round_is_the_same(tmp_path):
    inproc, sim = in_process_and_flower(tmp_path, ARGS, OPTS)
    assert len(sim["rounds"]) == len(inproc["rounds"]) == 2
    for a, b in zip(inproc["rounds"], sim["rounds"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        for key in ("local", "base", "novel"):
            assert b[key] == pytest.approx(a[key], abs=1e-9), key
    ref = torch.load(tmp_path / "inprocess" / "checkpoint.pt", weights_only=True)
    got = torch.load(tmp_path / "flower" / "checkpoint.pt", weights_only=True)
    assert sorted(got["memory"]) == sorted(ref["memory"]) == ["client0", "client1", "client2"]
    for k, v in ref["memory"].items():
        torch.testing.assert_close(got["memory"][k], v, atol=1e-5, rtol=1e-5)
    # the gating trained with experts in round 2: the nodes' personal state moved
    assert got["personal"] == [{}, {}, {}] and all(p for p in ref["personal"])
