"""Resuming Flower runs: a run that dies in round 3 and is resumed ends exactly as an uninterrupted one.

The run dies after the nodes trained round 3 and before the server checkpointed it, so the nodes are a
round ahead of the checkpoint and must start the resumed round 3 from their state of last round
before (``--frac 0.67`` samples 2 of 3 clients after round 1).
FedPGP keeps personal tensors on the nodes, so a wrong personal state changes the results. The
interrupted run is a fresh run in the output directory of the uninterrupted one: it must not pick up the
personal state that run left on the nodes. Both runs are Flower simulations with the same thread count,
so the comparison is exact.
"""
import json

import pytest
import torch

pytest.importorskip("flwr", reason="Flower is optional: pip install -r requirements-flower.txt")

from flwr.app import Context, RecordDict  # noqa: E402

from federated.errors import CheckpointError  # noqa: E402
from federated.flower.node import KEEP_ROUNDS, PersonalStateMissing, PersonalStore  # noqa: E402
from federated.run import main  # noqa: E402
from tests.fedtv_testing import (  # noqa: E402
    ServerDied,
    fast_args,
    server_dies_in_round,
)

ARGS = ["--trainer", "FedPGP", "--lr", "0.05", "--frac", "0.67", "--engine", "flower-sim"]


def _comparable(results: dict) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in results["rounds"]]


def _node_states(out) -> dict[str, dict]:
    """Experiment token -> client id -> the node's saved file."""
    found: dict[str, dict] = {}
    for path in sorted((out / "flower_nodes").glob("exp-*/client*.pt")):
        saved = torch.load(path, weights_only=True)
        found.setdefault(path.parent.name[len("exp-"):], {})[saved["client"]] = saved
    return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("flower_resume")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as Ray's actors
    try:
        full = main(fast_args(out, [*ARGS, "--rounds", "3"]))
        full_ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
        with server_dies_in_round(3), pytest.raises(ServerDied):
            main(fast_args(out, [*ARGS, "--rounds", "3"]))  # a fresh run in the same directory
        died_ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
        nodes_after_death = _node_states(out)
        resumed = main(fast_args(out, [*ARGS, "--rounds", "3", "--resume"]))
        resumed_ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    finally:
        torch.set_num_threads(threads)
    return out, full, full_ckpt, died_ckpt, nodes_after_death, resumed, resumed_ckpt


def test_resumed_run_ends_exactly_as_the_uninterrupted_one(runs):
    out, full, full_ckpt, died_ckpt, nodes_after_death, resumed, resumed_ckpt = runs
    assert died_ckpt["round"] == 2 and resumed_ckpt["round"] == 3
    assert died_ckpt["experiment"] == resumed_ckpt["experiment"] != full_ckpt["experiment"]
    # The nodes were ahead of the checkpoint: each sampled client had saved its round-3 state.
    ahead = nodes_after_death[died_ckpt["experiment"]]
    assert sorted(ahead) == [0, 1, 2]
    last = {cid: max(i for i, r in enumerate(full["rounds"]) if cid in r["clients"]) for cid in range(3)}
    assert {cid: saved["round"] for cid, saved in ahead.items()} == last  # 0-based rounds
    assert sorted(last.values())[1:] == [2, 2]  # two clients trained the lost round 3
    assert [r["clients"] for r in full["rounds"]] == [[0, 1, 2], *[sorted(r["clients"]) for r in full["rounds"][1:]]]
    assert all(len(r["clients"]) == 2 for r in full["rounds"][1:])
    # The same rounds, accuracies, losses and aggregation records, and the same tensors.
    assert [r["round"] for r in resumed["rounds"]] == [1, 2, 3]
    assert _comparable(resumed) == _comparable(full)
    assert resumed["final"] == full["final"] and resumed["zero_shot"] == full["zero_shot"]
    saved = json.loads((out / "results.json").read_text())
    assert [r["round"] for r in saved["rounds"]] == [1, 2, 3]
    for k, v in full_ckpt["global"].items():
        assert torch.equal(resumed_ckpt["global"][k], v), k
    assert set(resumed_ckpt["client_global"]) == set(full_ckpt["client_global"])
    # Every node's personal state after round 3, in both experiments' stores.
    nodes = _node_states(out)
    assert set(nodes) == {full_ckpt["experiment"], resumed_ckpt["experiment"]}
    for cid, want in nodes[full_ckpt["experiment"]].items():
        got = nodes[resumed_ckpt["experiment"]][cid]
        assert got["round"] == want["round"] and set(got["states"]) == set(want["states"])
        for r, state in want["states"].items():
            assert state and all(torch.equal(got["states"][r][k], v) for k, v in state.items()), (cid, r)


def test_fresh_run_does_not_pick_up_earlier_personal_state(runs):
    out, full, _, died_ckpt, _, _, _ = runs
    # The interrupted run started fresh in the same directory: its first two rounds equal the
    # uninterrupted run's, which they would not with the earlier run's personalisation.
    assert _comparable(died_ckpt["results"]) == _comparable(full)[:2]


def test_mismatched_checkpoints_are_refused(runs):
    out = runs[0]
    with pytest.raises(CheckpointError, match=r"another config \(OPTIM.LR 0.05 -> 0.01\)"):
        main(fast_args(out, [*ARGS, "--rounds", "4", "--resume", "--lr", "0.01"]))
    with pytest.raises(CheckpointError, match="written by a flower run of FedPGP"):
        # the in-process engine, same config (issue 17: a different one is refused by the shared config check first)
        main(fast_args(out, [*ARGS[:-2], "--rounds", "4", "--resume"]))
    # issue 17: refused by the config check both engines share, before anything is built
    with pytest.raises(CheckpointError, match=r"another config \(DATASET.USERS 3 -> 2\)"):
        main(fast_args(out, [*ARGS, "--rounds", "4", "--resume", "--num-users", "2"]))


def test_personal_store_keeps_the_last_rounds_per_experiment(tmp_path):
    initial = {"u": torch.zeros(2)}
    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    store = PersonalStore(ctx, 0, str(tmp_path), "ab12cd34")
    assert torch.equal(store.load(initial, -1)["u"], initial["u"])
    for r in range(KEEP_ROUNDS + 2):
        store.save({"u": torch.full((2,), float(r))}, r)
    kept = list(range(2, KEEP_ROUNDS + 2))
    assert sorted(torch.load(store.path, weights_only=True)["states"]) == kept
    assert store._memory_rounds() == kept
    # A new run id (a resumed run): an empty context.state, the same experiment token -> from disk.
    fresh = PersonalStore(Context(2, 1, {}, RecordDict(), {}), 0, str(tmp_path), "ab12cd34")
    assert torch.equal(fresh.load(initial, 2)["u"], torch.full((2,), 2.0))
    with pytest.raises(PersonalStateMissing, match="no personal state of round 2"):
        fresh.load(initial, 1)
    # Another experiment in the same state-dir sees none of it.
    other = PersonalStore(Context(3, 1, {}, RecordDict(), {}), 0, str(tmp_path), "ffff0000")
    with pytest.raises(PersonalStateMissing):
        other.load(initial, 2)
    with pytest.raises(ValueError, match="malformed experiment token"):
        PersonalStore(ctx, 0, str(tmp_path), "../x")
