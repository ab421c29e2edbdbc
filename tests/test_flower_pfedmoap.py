"""pFedMoAP on the Flower simulation against the in-process loop: the ServerApp keeps every client's
latest prompt (the coordinator's server step) and each node receives its own experts in a ``server``
record next to the shared tensors, so round 2 (the first with experts) is the same in both engines.
Tolerances as in test_flower_simulation.py."""
import pytest
import torch

pytest.importorskip("flwr", reason="Flower is optional: pip install -r requirements-flower.txt")

from federated.errors import ConfigError  # noqa: E402
from federated.run import main  # noqa: E402
from tests.fedtv_testing import fast_args, in_process_and_flower, tap_the_wire  # noqa: E402

ARGS = ["--trainer", "pFedMoAP", "--lr", "0.05"]
OPTS = ["TRAINER.PFEDMOAP.EMBED_DIM", "16", "TRAINER.PFEDMOAP.NUM_EXPERTS", "3"]


def test_experts_reach_the_nodes_and_every_round_is_the_same(tmp_path, monkeypatch):
    wire = tap_the_wire(monkeypatch)
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
    # only the prompt goes up; the gating (personal) never crosses the wire, the experts come down as "server"
    personal = set(ref["personal"][0])
    assert personal and all(k.startswith("gating.") for k in personal)
    up = [(kind, name, set(t)) for direction, kind, _, name, t in wire if direction == "up"]
    assert up == [("train", "arrays", {"prompt_learner.ctx"})] * 6
    assert not any(personal & set(t) for *_, t in wire)
    served = [set(t) for direction, _, _, name, t in wire if (direction, name) == ("down", "server")]
    assert served and all(keys <= {"experts", "own"} for keys in served)


def test_published_gating_is_refused_on_flower_before_anything_changes(tmp_path):
    """``GATING "published"`` (the official gating leak) passes one client's personal gating to the next client
    trained in the same process; on Flower the gating stays on its node, so the simulation refuses it in one line
    before Flower starts and before an earlier run's results in the output folder change."""
    (tmp_path / "results.json").write_text("an earlier run's")
    with pytest.raises(ConfigError, match=r"^pFedMoAP: TRAINER.PFEDMOAP.GATING 'published' \(the published leak: "
                                          r".*use GATING 'personal' there\) runs in process only: use --engine "
                                          r"inprocess$"):
        main(fast_args(tmp_path, [*ARGS, "--engine", "flower-sim"], [*OPTS, "TRAINER.PFEDMOAP.GATING", "published"]))
    assert (tmp_path / "results.json").read_text() == "an earlier run's"
    assert not (tmp_path / "flower_nodes").exists()
