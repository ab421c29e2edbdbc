"""Checkpoints, resume after a kill, non-finite losses, mismatched checkpoints, --eval-only."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from federated.errors import CheckpointError, TrainingDiverged
from federated.run import main
from tests.fedtv_testing import REPO, fast_args

ROUNDS = 6


def _rounds_done(out):
    path = os.path.join(out, "results.json")
    try:
        with open(path) as f:
            return len(json.load(f)["rounds"])
    except (OSError, ValueError):
        return 0


def _cli(out, args):
    """The command line in a fresh process (same thread count and environment for every run)."""
    cmd = [sys.executable, os.path.join(REPO, "federated_main.py"), *fast_args(out, args)]
    return subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def test_killed_run_resumes_to_the_same_results(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    args = ["--trainer", "CoOp", "--rounds", str(ROUNDS), "--frac", "0.67"]
    proc = _cli(full, args)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    reference = json.loads((full / "results.json").read_text())

    proc = _cli(killed, args)
    deadline = time.time() + 300
    while _rounds_done(killed) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = torch.load(killed / "checkpoint.pt", weights_only=True)["round"]
    assert 1 <= done < ROUNDS, "the run must be killed between rounds for this test to mean anything"

    proc = _cli(killed, args + ["--resume"])
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    resumed = json.loads((killed / "results.json").read_text())
    assert len(resumed["rounds"]) == ROUNDS
    for a, b in zip(reference["rounds"], resumed["rounds"], strict=True):
        assert a["clients"] == b["clients"]
        assert a["local"] == b["local"]
        assert a["train_loss"] == b["train_loss"]
    assert resumed["final"] == reference["final"]
    a = torch.load(full / "checkpoint.pt", weights_only=True)
    b = torch.load(killed / "checkpoint.pt", weights_only=True)
    for pa, pb in zip(a["personal"], b["personal"], strict=True):
        for k in pa:
            assert torch.equal(pa[k], pb[k])


def test_results_files(tmp_path):
    results = main(fast_args(tmp_path))
    for name in ("results.json", "metrics.csv", "log.txt", "checkpoint.pt", "accuracy.png"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "tensorboard").is_dir()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["DATASET"]["USERS"] == 3
    assert [r["round"] for r in saved["rounds"]] == [1, 2]
    first = saved["rounds"][0]
    assert first["clients"] == [0, 1, 2]
    assert set(first["local_per_client"]) == {"0", "1", "2"}
    assert first["bytes_up_per_client"] == first["bytes_down_per_client"] > 0
    final = saved["final"]
    assert set(final) >= {"local", "base", "novel", "hm"}
    b, n = final["base"], final["novel"]
    assert final["hm"] == pytest.approx(2 * b * n / (b + n))
    assert results["final"] == final
    csv_lines = (tmp_path / "metrics.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 3 and csv_lines[0].startswith("round,")


class _PoisonedLoader:
    """A training loader whose features are NaN (the client's loss becomes non-finite)."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield {**batch, "feat": batch["feat"] * float("nan")}


@pytest.mark.parametrize("batched", [False, True])
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, batched):
    from federated.runtime import ClientRuntime

    original = ClientRuntime.train_loader

    def poisoned(self, cid, round_idx):
        loader = original(self, cid, round_idx)
        return _PoisonedLoader(loader) if (cid, round_idx) == (1, 1) else loader

    monkeypatch.setattr(ClientRuntime, "train_loader", poisoned)
    with pytest.raises(TrainingDiverged, match="client 1 in round 2"):
        main(fast_args(tmp_path, ["--trainer", "PromptFL", "--rounds", "3"], ["FED.BATCH_CLIENTS", str(batched)]))
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["round"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["global"].values())


def test_mismatched_checkpoint_is_refused_clearly(tmp_path):
    main(fast_args(tmp_path, ["--trainer", "PromptFL", "--rounds", "1"]))
    # issue 17: a changed config is refused by the config check (every differing key), before the model is built
    with pytest.raises(CheckpointError, match=r"another config \(TRAINER.PROMPTFL.N_CTX 16 -> 4\)"):
        main(fast_args(tmp_path, ["--trainer", "PromptFL", "--rounds", "2", "--resume"],
                       ["TRAINER.PROMPTFL.N_CTX", "4"]))
    # the model check behind it: a checkpoint of another shape (same config) is refused by its signature
    from dassl.engine import build_trainer
    from federated.checkpoint import load_checkpoint
    from federated.cli import build_cfg, parse_args

    cfg = build_cfg(parse_args(fast_args(tmp_path, ["--trainer", "PromptFL"], ["TRAINER.PROMPTFL.N_CTX", "4"])))
    trainer = build_trainer(cfg, classnames=[f"c{i}" for i in range(6)])
    with pytest.raises(CheckpointError, match="does not match.*prompt_learner.ctx"):
        load_checkpoint(str(tmp_path), trainer, 3)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable") as err:
        main(fast_args(tmp_path / "bad", ["--eval-only", "--model-dir", str(tmp_path / "bad")]))
    assert "weights_only" not in str(err.value)  # never suggests loading it unsafely


def test_eval_only_on_novel_classes(tmp_path):
    results = main(fast_args(tmp_path, ["--trainer", "CoOp"]))
    record = main(fast_args(tmp_path, ["--trainer", "CoOp", "--eval-only", "--model-dir", str(tmp_path),
                                       "--subsample", "new"]))
    assert record["novel"] == pytest.approx(results["final"]["novel"])
    assert record["local"] is None
    assert (tmp_path / "eval_new.json").is_file()
