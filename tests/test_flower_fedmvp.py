"""FedMVP with the official client's LoRA switch (``TRAINER.FEDMVP.LORA``) on the Flower simulation against the
in-process loop. The switch is client state (``CLIENT_STATE``): in process it lives in the run state's personal
entries; on Flower each node keeps it in its personal store (``federated/flower/node.py``: ``context.state``,
mirrored to ``<state-dir>/exp-<token>/client<k>.pt``) and it never crosses the wire. ``LORA_THRESHOLD 2``: some
clients' round-1 loss falls below it and others' does not (the test checks the mix), so in round 2 some nodes train
the LoRA factors with the cross-attention frozen and others the plain generator: each node follows its own switch.
Tolerances as in test_flower_simulation.py (the same trainer code from the same seeds, one thread)."""
import pytest
import torch

pytest.importorskip("flwr", reason="Flower is optional: pip install -r requirements-flower.txt")

from federated.run import main  # noqa: E402
from tests.fedtv_testing import (  # noqa: E402
    ServerDied,
    fast_args,
    in_process_and_flower,
    server_dies_in_round,
    tap_the_wire,
)

ARGS = ["--trainer", "FedMVP"]
OPTS = ["TRAINER.FEDMVP.LORA", "True", "TRAINER.FEDMVP.LORA_THRESHOLD", "2"]
SWITCH = "prompt_learner.lora_switch"


def _node_files(out) -> dict[int, dict]:
    """Client id -> its node's personal-state file (one experiment in ``out``)."""
    files = sorted((out / "flower_nodes").glob("exp-*/client*.pt"))
    assert len({p.parent for p in files}) == 1, files
    return {int(p.stem[len("client"):]): torch.load(p, weights_only=True) for p in files}


def _comparable(results: dict) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in results["rounds"]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("flower_fedmvp")
    with pytest.MonkeyPatch.context() as mp:
        wire = tap_the_wire(mp)
        inproc, sim = in_process_and_flower(base, ARGS, OPTS)
    return base, inproc, sim, wire


def test_every_round_is_the_same_with_the_switch_on_the_nodes(runs):
    base, inproc, sim, _ = runs
    assert len(sim["rounds"]) == len(inproc["rounds"]) == 2
    for a, b in zip(inproc["rounds"], sim["rounds"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        for key in ("local", "base", "novel", "hm"):
            assert b[key] == pytest.approx(a[key], abs=1e-9), key
    ref = torch.load(base / "inprocess" / "checkpoint.pt", weights_only=True)
    got = torch.load(base / "flower" / "checkpoint.pt", weights_only=True)
    assert any(k.startswith("prompt_learner.lora.") for k in got["global"])  # the factors are shared
    for k, v in ref["global"].items():
        torch.testing.assert_close(got["global"][k], v, atol=1e-5, rtol=1e-5)
    # in process the switches are in the checkpoint; on Flower on the nodes, after each of their trainings
    assert got["personal"] == [{}, {}, {}]
    nodes = _node_files(base / "flower")
    assert sorted(nodes) == [0, 1, 2]
    for cid, saved in nodes.items():
        assert saved["round"] == 1 and sorted(saved["states"]) == [0, 1]
        assert all(set(s) == {SWITCH} for s in saved["states"].values())
        assert torch.equal(saved["states"][1][SWITCH], ref["personal"][cid][SWITCH])
    assert sorted(_switches_after_round_1(base)) == [0.0, 0.0, 1.0]  # a mix: each node has its own


def _switches_after_round_1(base) -> list[float]:
    return [saved["states"][0][SWITCH].item() for _, saved in sorted(_node_files(base / "flower").items())]


def test_the_switch_never_crosses_the_wire(runs):
    base, _, _, wire = runs
    ref = torch.load(base / "inprocess" / "checkpoint.pt", weights_only=True)
    shared, personal = set(ref["global"]), set(ref["personal"][0])
    assert personal == {SWITCH}
    up = [(kind, name, set(tensors)) for direction, kind, _, name, tensors in wire if direction == "up"]
    assert up == [("train", "arrays", shared)] * 6  # 3 clients x 2 rounds; evaluation replies carry metrics only
    down = [(kind, name, set(tensors)) for direction, kind, _, name, tensors in wire if direction == "down"]
    assert sorted(down) == sorted([("train", "arrays", shared), ("evaluate", "arrays", shared)] * 6)
    assert not any(personal & set(tensors) for *_, tensors in wire)


def test_each_node_trains_round_two_as_its_own_switch_says(runs):
    """Seen on the wire: in round 2 a node whose switch went on keeps the cross-attention block exactly as
    downloaded and moves the LoRA factors; the others move the block and keep the factors (as every node in
    round 1); ``linear`` always trains."""
    base, *_, wire = runs
    switched = _switches_after_round_1(base)
    train = [(direction, cid, t) for direction, kind, cid, _, t in wire if kind == "train"]
    frozen = ("prompt_learner.norm_q.", "prompt_learner.norm_kv.", "prompt_learner.attn.", "prompt_learner.ffn.")
    lora = ("prompt_learner.lora.",)
    for rnd in (0, 1):
        messages = train[6 * rnd: 6 * rnd + 6]
        start = {cid: t for direction, cid, t in messages if direction == "down"}
        end = {cid: t for direction, cid, t in messages if direction == "up"}
        assert sorted(start) == sorted(end) == [0, 1, 2]
        for cid in range(3):
            on = rnd == 1 and switched[cid] == 1.0
            for k, v in start[cid].items():
                kept = torch.equal(end[cid][k], v)
                if k.startswith(frozen):
                    assert kept == on, (rnd, cid, k)
                elif k.startswith(lora):
                    assert kept != on, (rnd, cid, k)
                else:
                    assert not kept, (rnd, cid, k)


def test_a_run_killed_before_its_checkpoint_resumes_with_the_switches(runs, tmp_path):
    """The ServerApp dies after the nodes trained round 2 and before it checkpointed it; the resumed run starts
    round 2 again from each node's round-1 state on disk (its own switch): it ends as the uninterrupted run."""
    base, _, sim, _ = runs
    flags = [*ARGS, "--engine", "flower-sim"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as Ray's actors and the uninterrupted run
    try:
        with server_dies_in_round(2), pytest.raises(ServerDied):
            main(fast_args(tmp_path, flags, OPTS))
        assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["round"] == 1
        assert all(saved["round"] == 1 for saved in _node_files(tmp_path).values())  # a round ahead
        resumed = main(fast_args(tmp_path, [*flags, "--resume"], OPTS))
    finally:
        torch.set_num_threads(threads)
    assert [r["round"] for r in resumed["rounds"]] == [1, 2]
    assert _comparable(resumed) == _comparable(sim)
    want = torch.load(base / "flower" / "checkpoint.pt", weights_only=True)["global"]
    got = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["global"]
    assert all(torch.equal(got[k], v) for k, v in want.items())
