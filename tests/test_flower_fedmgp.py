"""FedMGP on the Flower simulation against the in-process loop: the group sampling happens on the nodes
after local training (the positions stay there, personal), only the rank tensors cross the wire, and the
ServerApp's per-rank unweighted average equals the in-process one. Tolerances as in
test_flower_simulation.py (the same trainer code from the same seeds, one thread)."""
import pytest
import torch

pytest.importorskip("flwr", reason="Flower is optional: pip install -r requirements-flower.txt")

from tests.fedtv_testing import in_process_and_flower  # noqa: E402

ARGS = ["--trainer", "FedMGP", "--lr", "0.5"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("flower_fedmgp")
    inproc, sim = in_process_and_flower(base, ARGS)
    return base, inproc, sim


def test_every_round_and_the_global_groups_are_the_same(runs):
    base, inproc, sim = runs
    assert len(sim["rounds"]) == len(inproc["rounds"]) == 2
    for a, b in zip(inproc["rounds"], sim["rounds"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["aggregation"]["weights"] == pytest.approx(a["aggregation"]["weights"])
        for key in ("local", "base", "novel", "hm"):
            assert b[key] == pytest.approx(a[key], abs=1e-9), key
    ref = torch.load(base / "inprocess" / "checkpoint.pt", weights_only=True)
    got = torch.load(base / "flower" / "checkpoint.pt", weights_only=True)
    assert sorted(got["global"]) == ["exchange.text_rank", "exchange.visual_rank"]
    for k, v in ref["global"].items():
        torch.testing.assert_close(got["global"][k], v, atol=1e-5, rtol=1e-5)
    # the groups and the sampled positions never reached the ServerApp
    assert all(p == {} for p in got["personal"])
