"""FedMVP with the official client's LoRA switch (``TRAINER.FEDMVP.LORA``) on the Flower simulation against the
in-process loop. The switch is client state (``CLIENT_STATE``): in process it lives in the run state's personal
entries; on Flower each node keeps it in its personal store (``federated/flower/node.py``: ``context.state``,
mirrored to ``<state-dir>/exp-<token>/client<k>.pt``) and it never crosses the wire. ``LORA_THRESHOLD 100``: every
client switches on after round 1, so round 2 trains the LoRA factors with the cross-attention frozen, which only
a node that kept its switch does. Tolerances as in test_flower_simulation.py (the same trainer code from the same
seeds, one thread)."""
import pytest
import torch

pytest.importorskip("flwr", reason="Flower is optional: pip install -r requirements-flower.txt")

from federated.flower import strategy as flower_strategy  # noqa: E402
from federated.run import main  # noqa: E402
from tests.fedtv_testing import fast_args, in_process_and_flower, tap_the_wire  # noqa: E402

ARGS = ["--trainer", "FedMVP"]
OPTS = ["TRAINER.FEDMVP.LORA", "True", "TRAINER.FEDMVP.LORA_THRESHOLD", "100"]
SWITCH = "prompt_learner.lora_switch"


class ServerDied(RuntimeError):
    pass


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
    assert [p[SWITCH].item() for p in ref["personal"]] == [1.0, 1.0, 1.0]
    assert got["personal"] == [{}, {}, {}]
    nodes = _node_files(base / "flower")
    assert sorted(nodes) == [0, 1, 2]
    for saved in nodes.values():
        assert saved["round"] == 1 and sorted(saved["states"]) == [0, 1]
        assert all(set(s) == {SWITCH} and s[SWITCH].item() == 1.0 for s in saved["states"].values())


def test_the_switch_never_crosses_the_wire(runs):
    base, _, _, wire = runs
    ref = torch.load(base / "inprocess" / "checkpoint.pt", weights_only=True)
    shared, personal = set(ref["global"]), set(ref["personal"][0])
    assert personal == {SWITCH}
    up = [(kind, name, set(tensors)) for direction, kind, name, tensors in wire if direction == "up"]
    assert up == [("train", "arrays", shared)] * 6  # 3 clients x 2 rounds; evaluation replies carry metrics only
    down = [(kind, name, set(tensors)) for direction, kind, name, tensors in wire if direction == "down"]
    assert sorted(down) == sorted([("train", "arrays", shared), ("evaluate", "arrays", shared)] * 6)
    assert not any(personal & set(tensors) for *_, tensors in wire)


def test_round_two_trains_the_factors_with_the_attention_frozen(runs):
    """What the nodes' switches do, seen on the wire: round 2's uploads keep the cross-attention block exactly as
    downloaded and move the LoRA factors (round 1: the other way round)."""
    *_, wire = runs
    downloads = [t for direction, kind, _, t in wire if (direction, kind) == ("down", "train")]
    uploads = [t for direction, kind, _, t in wire if (direction, kind) == ("up", "train")]
    frozen = ("prompt_learner.norm_q.", "prompt_learner.norm_kv.", "prompt_learner.attn.", "prompt_learner.ffn.")
    for rnd, moved in ((0, frozen), (1, ("prompt_learner.lora.",))):
        start, ends = downloads[3 * rnd], uploads[3 * rnd: 3 * rnd + 3]
        assert all(torch.equal(d[k], start[k]) for d in downloads[3 * rnd: 3 * rnd + 3] for k in start)
        for end in ends:
            for k, v in start.items():
                kept = torch.equal(end[k], v)
                if k.startswith(moved):
                    assert not kept, (rnd, k)
                elif k.startswith(frozen + ("prompt_learner.lora.",)):
                    assert kept, (rnd, k)
                else:
                    assert not kept, (rnd, k)  # linear trains in both rounds


def test_a_run_killed_before_its_checkpoint_resumes_with_the_switches(runs, tmp_path, monkeypatch):
    """The ServerApp dies after the nodes trained round 2 and before it checkpointed it; the resumed run starts
    round 2 again from each node's round-1 state on disk (switch on): it ends as the uninterrupted run."""
    base, _, sim, _ = runs
    original = flower_strategy.FedTVStrategy.aggregate_train

    def dies_in_round_2(self, server_round, replies):
        replies = list(replies)  # the nodes have trained round 2 and saved their state
        if self.offset + server_round == 2:
            raise ServerDied("killed before round 2 was checkpointed")
        return original(self, server_round, replies)

    flags = [*ARGS, "--engine", "flower-sim"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as Ray's actors and the uninterrupted run
    try:
        monkeypatch.setattr(flower_strategy.FedTVStrategy, "aggregate_train", dies_in_round_2)
        with pytest.raises(ServerDied):
            main(fast_args(tmp_path, flags, OPTS))
        monkeypatch.setattr(flower_strategy.FedTVStrategy, "aggregate_train", original)
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
