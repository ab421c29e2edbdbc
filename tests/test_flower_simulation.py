"""Flower simulation (``--engine flower-sim``) against the in-process loop, and what crosses the wire.

Tolerance: both engines run the same trainer code from the same seeds (``derive_seed(SEED, round,
client)``), the same loaders and the same float64 FedAvg; the only difference is the process. Ray
actors run torch with one intra-op thread; the in-process run here is given one thread too, so the
float32 sums are added in the same order. The tolerances (tensors 1e-5, losses 1e-5 relative) leave
room for library-level differences between the processes; accuracies must agree to 1e-9.
"""
import os

import pytest
import torch

pytest.importorskip("flwr", reason="Flower is optional: pip install -r requirements-flower.txt")

from dassl.utils import reset_logger  # noqa: E402
from federated.flower import strategy as flower_strategy  # noqa: E402
from federated.run import main  # noqa: E402
from tests.fedtv_testing import console_output, fast_args  # noqa: E402

ARGS = ["--trainer", "FedPGP", "--lr", "0.05"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same FedPGP run in process and on the Flower simulation; the arrays the server received."""
    base = tmp_path_factory.mktemp("flower_sim")
    received: list[dict] = []
    original = flower_strategy.FedTVStrategy.aggregate_train

    def spy(self, server_round, replies):
        replies = list(replies)
        for reply in replies:
            if not reply.has_error():
                received.append({"client": int(reply.content["metrics"]["client-id"]),
                                 "arrays": dict(reply.content["arrays"].to_torch_state_dict()),
                                 "records": sorted(reply.content.keys())})
        return original(self, server_round, replies)

    flower_strategy.FedTVStrategy.aggregate_train = spy
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as Ray's actors: the same float32 summation order in both engines
    try:
        inproc = main(fast_args(base / "inprocess", ARGS))
        with console_output() as console:
            sim = main(fast_args(base / "flower", [*ARGS, "--engine", "flower-sim"]))
    finally:
        flower_strategy.FedTVStrategy.aggregate_train = original
        torch.set_num_threads(threads)
        reset_logger()
    return base, inproc, sim, received, console[0]


def test_simulation_console_shows_our_lines_once(runs):
    """Issue 18, point 7: no Flower line twice, no deprecation notice of the simulation API, no output of
    the ClientApp actors ("(ClientAppActor pid=...)"), and the in-process engine's header, rounds, paths."""
    text = runs[4]
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert "DEPRECATED" not in text and "ClientAppActor" not in text and "INFO:flwr" not in text, text[-3000:]
    assert "WARNING:flwr" not in text and "Tip: In future versions of Ray" not in text, text[-3000:]
    assert lines[0].startswith("FedPGP on ToyWorld") and lines[-1].startswith("results: "), lines
    assert [ln.split(":")[0] for ln in lines if ln.startswith("round ") and "Local" in ln] == ["round 1/2", "round 2/2"]


def test_simulation_matches_in_process_loop(runs):
    base, inproc, sim, _, _ = runs
    assert len(sim["rounds"]) == len(inproc["rounds"]) == 2
    for a, b in zip(inproc["rounds"], sim["rounds"], strict=True):
        assert a["clients"] == b["clients"]
        assert b["missing_clients"] == []
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        for key in ("local", "base", "novel", "hm"):
            assert b[key] == pytest.approx(a[key], abs=1e-9), key
        for key in ("hm_local_base_novel", "mean_local_hm", "global_base", "global_novel", "global_hm"):
            assert a[key] is not None and b[key] == pytest.approx(a[key], abs=1e-9), key  # issue 15 metrics
        assert b["local_per_client"] == pytest.approx(a["local_per_client"], abs=1e-9)
        assert b["bytes_up_per_client"] == a["bytes_up_per_client"] > 0
    assert sim["zero_shot"] == inproc["zero_shot"]
    # The global prompt on the server and every client's personal U, V on its node.
    ref = torch.load(base / "inprocess" / "checkpoint.pt", weights_only=True)
    got = torch.load(base / "flower" / "checkpoint.pt", weights_only=True)
    assert set(got["global"]) == set(ref["global"]) and got["global"]
    for k in ref["global"]:
        torch.testing.assert_close(got["global"][k], ref["global"][k], atol=1e-5, rtol=1e-5)
    node_files = sorted((base / "flower" / "flower_nodes").glob(f"exp-{got['experiment']}/client*.pt"))
    assert len(node_files) == 3
    for path in node_files:
        saved = torch.load(path, weights_only=True)
        expected = ref["personal"][saved["client"]]
        assert saved["round"] == 1 and sorted(saved["states"]) == [0, 1]  # the state after each round
        latest = saved["states"][saved["round"]]
        assert set(latest) == set(expected) and expected
        for k in expected:
            torch.testing.assert_close(latest[k], expected[k], atol=1e-5, rtol=1e-5)


def test_only_shared_tensors_reach_the_server(runs):
    base, _, _, received, _ = runs
    ckpt = torch.load(base / "inprocess" / "checkpoint.pt", weights_only=True)
    shared, personal = set(ckpt["global"]), set(ckpt["personal"][0])
    assert shared and personal and not shared & personal
    assert sorted(r["client"] for r in received) == [0, 0, 1, 1, 2, 2]  # 3 clients x 2 rounds
    for r in received:
        assert set(r["arrays"]) == shared
        assert r["records"] == ["arrays", "metrics"]
        for k, v in r["arrays"].items():
            assert v.shape == ckpt["global"][k].shape
    # What the Flower server keeps holds no personal tensor either.
    flower_ckpt = torch.load(base / "flower" / "checkpoint.pt", weights_only=True)
    assert all(state == {} for state in flower_ckpt["personal"])
    assert not os.path.exists(base / "inprocess" / "flower_nodes")


def test_simulation_console_lines_once(runs):
    """The run's own lines once each in log.txt (the console's copy): zero-shot, one line per round; none of
    Flower's repeated round summaries, no second copy of Flower's lines through the root logger."""
    base, _, _, _, _ = runs
    logs = sorted(p for p in os.listdir(base / "flower") if p.startswith("log.txt"))
    text = (base / "flower" / logs[-1]).read_text()
    lines = text.splitlines()
    assert sum(ln.startswith("zero-shot CLIP") for ln in lines) == 1
    assert [sum(ln.startswith(f"round {r}/2:  Local") for ln in lines) for r in (1, 2)] == [1, 1]
    assert "Aggregated MetricRecord" not in text and "INFO:flwr" not in text and "FutureWarning" not in text
    assert lines[-1].startswith("results: ")
