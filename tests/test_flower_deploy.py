"""Real Flower deployments on 127.0.0.1 (``tools/flower_deploy.py``): TLS with node authentication,
a SuperNode killed in the middle of a run that rejoins with its personal state, and a run whose
SuperLink dies, resumed with ``--resume``.

Each test starts a SuperLink and SuperNodes as separate processes; every Flower message runs in a
fresh ClientApp process, so one run takes a few minutes on 2 shared cores. Bounded by the tool's
``--timeout``; the tool stops exactly the processes it started.
"""
import json
import shlex
import shutil

import pytest
import torch

pytest.importorskip("flwr", reason="Flower is optional: pip install -r requirements-flower.txt")

from federated.run import main  # noqa: E402
from tests.fedtv_testing import FAST_OPTS  # noqa: E402
from tools.flower_deploy import main as deploy  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed for the certificates")


def _opts(users: int, rounds: int, trainer: str = "FedPGP") -> str:
    return " ".join(["--trainer", trainer, "--num-users", str(users), "--rounds", str(rounds), "--local-epochs", "1",
                     "--num-shots", "4", "--clip-weights", "none", "--lr", "0.05", *FAST_OPTS])


def test_tls_deployment_with_node_authentication(tmp_path):
    results = deploy(["--work-dir", str(tmp_path), "--num-nodes", "2", "--port", "9310", "--timeout", "500",
                      "--round-timeout", "120", "--opts", _opts(2, 2)])
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    assert all(r["clients"] == [0, 1] and r["missing_clients"] == [] for r in results["rounds"])
    assert results["final"]["local"] is not None and set(results["rounds"][-1]["local_per_client"]) == {"0", "1"}
    assert (tmp_path / "results.json").is_file()
    for name in ("ca.crt", "server.crt", "node0", "node1.pub"):
        assert (tmp_path / "certs" / name).is_file()
    link_log = (tmp_path / "logs" / "superlink.log").read_text()
    assert "--insecure" not in link_log
    # Personal tensors stayed on the nodes: the server's checkpoint has none, each node has its own.
    ckpt = torch.load(tmp_path / "output" / "checkpoint.pt", weights_only=True)
    assert all(p == {} for p in ckpt["personal"]) and ckpt["global"]
    saved = sorted(tmp_path.glob(f"node_state/exp-{ckpt['experiment']}/client*.pt"))
    assert [torch.load(p, weights_only=True)["client"] for p in saved] == [0, 1]


def test_killed_node_does_not_stop_the_run_and_rejoins(tmp_path):
    # The dead node is reported unavailable by the SuperLink's heartbeat check (seconds), so round 2 goes
    # on without it. The node is restarted once round 2 is written; rejoin-wait makes round 3 wait for it
    # (otherwise whether it makes round 3 depends on how fast it starts), and the generous round timeout
    # lets the new process rebuild the experiment and answer.
    results = deploy(["--work-dir", str(tmp_path), "--num-nodes", "3", "--port", "9330", "--timeout", "560",
                      "--round-timeout", "150", "--rejoin-wait", "120", "--opts", _opts(3, 3),
                      "--kill-node", "2", "--kill-after-round", "1", "--restart-after-round", "2"])
    rounds = results["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]  # no round lost, the run went on
    assert rounds[0]["clients"] == [0, 1, 2]
    assert rounds[1]["clients"] == [0, 1] and rounds[1]["missing_clients"] == [2]
    assert rounds[2]["clients"] == [0, 1, 2]  # the restarted node is back
    assert set(rounds[2]["local_per_client"]) == {"0", "1", "2"}
    assert "client 2: personal state restored" in (tmp_path / "logs" / "node2.log").read_text()
    saved = torch.load(next(tmp_path.glob("node_state/exp-*/client2.pt")), weights_only=True)
    assert saved["round"] == 2  # trained again in the third round (0-based 2)


def test_deployment_resumes_after_the_superlink_dies(tmp_path):
    # Everything is restarted (SuperLink, ServerApp, SuperNodes); the nodes keep their state-dir. The
    # resumed run ends as the in-process run of the same arguments (same seeds; the tolerance of
    # tests/test_flower_simulation.py): with a wrong personal state on the nodes round 3 would differ.
    work, opts = tmp_path / "deploy", _opts(3, 3)
    first = deploy(["--work-dir", str(work), "--num-nodes", "3", "--port", "9350", "--timeout", "400",
                    "--round-timeout", "120", "--opts", opts, "--kill-superlink-after-round", "2"])
    assert [r["round"] for r in first["rounds"]] == [1, 2]
    assert torch.load(work / "output" / "checkpoint.pt", weights_only=True)["round"] == 2
    resumed = deploy(["--work-dir", str(work), "--num-nodes", "3", "--port", "9370", "--timeout", "400",
                      "--round-timeout", "120", "--opts", opts, "--resume"])
    assert [r["round"] for r in resumed["rounds"]] == [1, 2, 3]
    assert resumed["rounds"][:2] == first["rounds"]
    ckpt = torch.load(work / "output" / "checkpoint.pt", weights_only=True)
    assert ckpt["round"] == 3
    assert [p.name for p in (work / "node_state").iterdir()] == [f"exp-{ckpt['experiment']}"]
    ref_dir = tmp_path / "inprocess"
    reference = main(["--output-dir", str(ref_dir), *shlex.split(opts)])
    for a, b in zip(reference["rounds"], resumed["rounds"], strict=True):
        assert a["clients"] == b["clients"]
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
    ref = torch.load(ref_dir / "checkpoint.pt", weights_only=True)
    for k, v in ref["global"].items():
        torch.testing.assert_close(ckpt["global"][k], v, atol=1e-5, rtol=1e-5)
    for path in (work / "node_state").glob("exp-*/client*.pt"):
        saved = torch.load(path, weights_only=True)
        for k, v in ref["personal"][saved["client"]].items():
            torch.testing.assert_close(saved["states"][saved["round"]][k], v, atol=1e-5, rtol=1e-5)


def test_the_documented_command_runs_as_written(tmp_path):
    """docs/FLOWER_USAGE.md's deployment command, exactly as written except the work folder: default
    (shipped) toy-world weights, TLS, the default port."""
    import os
    import re
    import subprocess
    import sys

    from tests.fedtv_testing import REPO

    with open(os.path.join(REPO, "docs", "FLOWER_USAGE.md")) as f:
        text = f.read()
    (command,) = [c.replace("\\\n", " ") for c in re.findall(r"^python tools/flower_deploy\.py.*?(?<!\\)\n", text,
                                                              flags=re.M | re.S)]
    argv = shlex.split(command)
    argv[argv.index("--work-dir") + 1] = str(tmp_path / "deploy")
    env = dict(os.environ, HF_HUB_OFFLINE="1", FEDTV_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, *argv[1:]], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "deploy" / "results.json").read_text())
    users = int(argv[argv.index("--num-nodes") + 1])
    assert len(results["rounds"]) == int(re.search(r"--rounds (\d+)", command).group(1))
    assert results["config"]["MODEL"]["BACKBONE"]["WEIGHTS"].endswith("clip/weights/tiny_toyworld.safetensors")
    assert results["zero_shot"]["local"] > 40  # the shipped weights, not random ones: 10 classes per client
    assert set(results["rounds"][-1]["local_per_client"]) == {str(k) for k in range(users)}
    log = (tmp_path / "deploy" / "output" / "log.txt").read_text()  # the ServerApp's own console lines
    assert "zero-shot CLIP" in log and sum(ln.startswith("round 2/2:") for ln in log.splitlines()) == 1
    assert "INFO:flwr:" not in (tmp_path / "deploy" / "logs" / "flwr_run.log").read_text()  # Flower's lines once


def test_a_failed_run_reports_the_servers_own_error(tmp_path):
    from tools.flower_deploy import last_error

    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "superlink.log").write_text("INFO : starting\nTraceback (most recent call last):\n  File x\n"
                                        "clip.loading.ClipWeightsUnavailable: The default weights are missing\n")
    (logs / "flwr_run.log").write_text("INFO : run 1 submitted\n")
    assert last_error(str(logs)) == "clip.loading.ClipWeightsUnavailable: The default weights are missing"
