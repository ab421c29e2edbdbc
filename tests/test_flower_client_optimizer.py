"""``FED.CLIENT_OPTIMIZER_STATE`` (FedTPG's and FedMVP's published ViT-B/16 setting: each client's momentum carries
over to its next round) on the Flower simulation against the in-process loop. A Flower process's trainer is not the
client's own (a simulation actor serves any node), so the node keeps the client's optimiser state in its personal
store with the round's record and hands it back before the client's next training; it never crosses the wire.
Round 2's single step per client adds 0.9 x round 1's momentum, so a node that lost it ends elsewhere (checked
against a run without the kept state). Tolerances as in test_flower_simulation.py."""
import pytest
import torch

pytest.importorskip("flwr", reason="Flower is optional: pip install -r requirements-flower.txt")

from federated.flower.node import OPTIMIZER_PREFIX  # noqa: E402
from federated.run import main  # noqa: E402
from tests.fedtv_testing import (  # noqa: E402
    ServerDied,
    fast_args,
    in_process_and_flower,
    server_dies_in_round,
    tap_the_wire,
)

ARGS = ["--trainer", "FedTPG"]  # tiny.yaml: SGD with momentum 0.9
OPTS = ["FED.CLIENT_OPTIMIZER_STATE", "True"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("flower_client_optimizer")
    with pytest.MonkeyPatch.context() as mp:
        wire = tap_the_wire(mp)
        inproc, sim = in_process_and_flower(base, ARGS, OPTS)
    return base, inproc, sim, wire


def test_each_node_keeps_its_clients_momentum_and_the_rounds_are_the_same(runs):
    tmp_path, inproc, sim, wire = runs
    main(fast_args(tmp_path / "fresh", ARGS))  # momentum restarted every round
    assert len(sim["rounds"]) == len(inproc["rounds"]) == 2
    for a, b in zip(inproc["rounds"], sim["rounds"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        for key in ("local", "base", "novel", "hm"):
            assert b[key] == pytest.approx(a[key], abs=1e-9), key
    ref = torch.load(tmp_path / "inprocess" / "checkpoint.pt", weights_only=True)["global"]
    got = torch.load(tmp_path / "flower" / "checkpoint.pt", weights_only=True)["global"]
    other = torch.load(tmp_path / "fresh" / "checkpoint.pt", weights_only=True)["global"]
    for k, v in ref.items():
        torch.testing.assert_close(got[k], v, atol=1e-5, rtol=1e-5)
    assert max((other[k] - v).abs().max().item() for k, v in ref.items()) > 1e-3  # the kept momentum matters
    # the nodes' stores: every training's record holds the client's momentum, nothing personal besides it
    files = sorted((tmp_path / "flower" / "flower_nodes").glob("exp-*/client*.pt"))
    assert len(files) == 3
    for path in files:
        saved = torch.load(path, weights_only=True)
        assert sorted(saved["states"]) == [0, 1]
        for state in saved["states"].values():
            assert state and all(k.startswith(OPTIMIZER_PREFIX) and k.endswith("/momentum_buffer") for k in state)
    # only the shared tensors went up; no optimiser state on the wire
    up = [set(t) for direction, kind, _, _, t in wire if (direction, kind) == ("up", "train")]
    assert up == [set(ref)] * 6
    assert not any(k.startswith(OPTIMIZER_PREFIX) or "momentum" in k for *_, t in wire for k in t)


def test_a_resumed_run_keeps_the_momentum_from_the_nodes_disks(runs, tmp_path):
    """The ServerApp dies after the nodes trained round 2, before its checkpoint; the resumed run trains round 2
    again from each node's round-1 record on disk, momentum included, and ends as the uninterrupted run."""
    base, _, sim, _ = runs
    flags = [*ARGS, "--engine", "flower-sim"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as Ray's actors and the uninterrupted run
    try:
        with server_dies_in_round(2), pytest.raises(ServerDied):
            main(fast_args(tmp_path, flags, OPTS))
        resumed = main(fast_args(tmp_path, [*flags, "--resume"], OPTS))
    finally:
        torch.set_num_threads(threads)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in sim["rounds"]]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed["rounds"]] == strip
    want = torch.load(base / "flower" / "checkpoint.pt", weights_only=True)["global"]
    got = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["global"]
    assert all(torch.equal(got[k], v) for k, v in want.items())
