"""CE-LoRA on the Flower simulation against the in-process loop: each client's feature statistics (the
trainer's side information) travel once with its first update, so the ServerApp's personalised
aggregation uses the data similarity too (before, the ServerApp never trained and silently dropped it).
Tolerances as in test_flower_simulation.py."""
import pytest
import torch

pytest.importorskip("flwr", reason="Flower is optional: pip install -r requirements-flower.txt")

from tests.fedtv_testing import in_process_and_flower  # noqa: E402

ARGS = ["--trainer", "CELoRA", "--lr", "0.01"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("flower_celora")
    inproc, sim = in_process_and_flower(base, ARGS)
    return base, inproc, sim


def _same_round(a: dict, b: dict) -> None:
    assert a["aggregation"]["data_similarity"] == b["aggregation"]["data_similarity"] == "used"
    torch.testing.assert_close(torch.tensor(b["aggregation"]["personal_weights"]),
                               torch.tensor(a["aggregation"]["personal_weights"]), atol=1e-5, rtol=0)
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
    for key in ("local", "base", "novel", "hm"):
        assert b[key] == pytest.approx(a[key], abs=1e-9), key


def test_statistics_reach_the_flower_aggregator_and_round_one_is_the_same(runs):
    _, inproc, sim = runs
    assert len(sim["rounds"]) == len(inproc["rounds"]) == 2
    assert [r["aggregation"]["data_similarity"] for r in sim["rounds"]] == ["used", "used"]
    _same_round(inproc["rounds"][0], sim["rounds"][0])


def test_every_round_and_the_personalised_mixes_are_the_same(runs):
    base, inproc, sim = runs
    for a, b in zip(inproc["rounds"], sim["rounds"], strict=True):
        _same_round(a, b)
    ref = torch.load(base / "inprocess" / "checkpoint.pt", weights_only=True)
    got = torch.load(base / "flower" / "checkpoint.pt", weights_only=True)
    for cid, state in ref["client_global"].items():
        for k, v in state.items():
            torch.testing.assert_close(got["client_global"][cid][k], v, atol=1e-5, rtol=1e-5)
