"""A resume never silently changes the experiment, nothing in an output folder changes before a run is
known to be valid, and every fault ends in one clear message (issue 17 items 2, 6-12)."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from federated.errors import CheckpointError, ConfigError, OutputError, TrainingDiverged
from federated.run import main
from tests.fedtv_testing import REPO, fast_args

ARGS = ["--trainer", "PromptFL", "--rounds", "1"]


def _snapshot(folder) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` with its bytes and modification time."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = (f.read(), os.stat(path).st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 1-round run (its folder is copied by the tests that change it)."""
    out = tmp_path_factory.mktemp("finished")
    main(fast_args(out, ARGS))
    return out


def _copy(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    return run


def test_changed_config_resume_is_refused_and_changes_nothing(finished, tmp_path):
    run = _copy(finished, tmp_path)
    before = _snapshot(run)
    with pytest.raises(CheckpointError) as err:
        main(fast_args(run, [*ARGS, "--rounds", "2", "--resume", "--seed", "7"], ["OPTIM.LR", "0.5"]))
    message = str(err.value)
    assert "another config (" in message and "OPTIM.LR 0.05 -> 0.5" in message and "SEED 1 -> 7" in message
    assert "OPTIM.ROUND" not in message.split(";")[0]  # an allowed change is not listed as a difference
    assert _snapshot(run) == before  # split.json, results, checkpoint, logs: untouched, no new file


def test_fewer_rounds_than_finished_are_refused(finished, tmp_path):
    run = _copy(finished, tmp_path)
    main(fast_args(run, [*ARGS, "--rounds", "2", "--resume"]))
    before = _snapshot(run)
    with pytest.raises(CheckpointError, match="finished 2 rounds: --rounds 1 would discard some"):
        main(fast_args(run, [*ARGS, "--rounds", "1", "--resume"]))
    assert _snapshot(run) == before


def test_allowed_changes_are_recorded_in_results(finished, tmp_path):
    run = _copy(finished, tmp_path)
    results = main(fast_args(run, [*ARGS, "--rounds", "4", "--resume"], ["TEST.EVAL_FREQ", "3"]))
    assert [r["round"] for r in results["rounds"]] == [1, 2, 3, 4]
    # evaluated: round 1 (every round then), 3 (every 3rd now) and 4 (the last)
    assert [r.get("local") is not None for r in results["rounds"]] == [True, False, True, True]
    saved = json.loads((run / "results.json").read_text())
    moved = [str(finished), str(run)]  # the run was copied to another folder: recorded too
    assert saved["resumes"] == [{"after_round": 1, "config_changes": {"OPTIM.ROUND": [1, 4], "OUTPUT_DIR": moved,
                                                                      "TEST.EVAL_FREQ": [1, 3]}}]
    assert saved["config"]["OPTIM"]["ROUND"] == 4


def test_both_engines_share_one_resume_check():
    from federated import checkpoint
    from federated.flower import server_app

    assert server_app.load_checkpoint is checkpoint.load_checkpoint
    assert not hasattr(server_app, "RESUMABLE_CHANGES")  # no second list to drift apart


def test_eval_only_with_a_missing_or_empty_model_dir_creates_nothing(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(ConfigError, match="does not exist"):
        main(fast_args(tmp_path / "out", ["--eval-only", "--model-dir", str(missing)]))
    assert not missing.exists() and not (tmp_path / "out").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        main(["--eval-only", "--model-dir", str(empty), *fast_args(empty)[2:]])
    assert list(empty.iterdir()) == []


def test_stale_temp_files_are_removed_when_a_run_restarts(finished, tmp_path):
    run = _copy(finished, tmp_path)
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    stale = [f"checkpoint.pt.tmp.{dead}", f"metrics.csv.tmp.{dead}", f".results.json.tmp-{dead}-k2j3"]
    for name in stale:
        (run / name).write_bytes(b"half a file")
    main(fast_args(run, [*ARGS, "--rounds", "2", "--resume"]))
    assert not [n for n in stale if (run / n).exists()]
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]


def test_yaml_syntax_errors_name_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("OPTIM:\n  LR: 0.1\n  NAME: [sgd\n")
    with pytest.raises(ConfigError, match=r"YAML syntax error in .*bad.yaml:4:1 \(file:line:column\)"):
        main(fast_args(tmp_path / "out", ["--config-file", str(bad)]))
    assert not (tmp_path / "out").exists()


def test_python_config_files_are_never_executed(tmp_path):
    marker = tmp_path / "marker"
    py = tmp_path / "config.py"
    py.write_text(f"open({str(marker)!r}, 'w').write('ran')\nfrom yacs.config import CfgNode\ncfg = CfgNode()\n")
    with pytest.raises(ConfigError, match="only YAML files .* are accepted"):
        main(fast_args(tmp_path / "out", ["--config-file", str(py)]))
    assert not marker.exists()


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_config_values_are_refused_up_front(tmp_path, value):
    cfg = tmp_path / "nan.yaml"
    cfg.write_text(f"OPTIM:\n  LR: {value}\n")
    with pytest.raises(ConfigError, match=r"OPTIM.LR is (nan|inf|-inf): config values must be finite"):
        main(fast_args(tmp_path / "out", ["--config-file", str(cfg)]))
    assert not (tmp_path / "out").exists()


def test_results_json_is_always_valid_json(tmp_path):
    from federated.results import ResultsWriter

    writer = ResultsWriter(str(tmp_path), __import__("federated.config", fromlist=["get_cfg"]).get_cfg(),
                           tensorboard=False)
    writer.add_round({"round": 1, "clients": [0], "train_loss": float("nan"), "train_acc": float("inf"),
                      "local": 50.0})
    saved = json.loads((tmp_path / "results.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert saved["rounds"][0]["train_loss"] is None and saved["rounds"][0]["train_acc"] is None


def test_divergence_in_round_1_says_no_checkpoint_exists(tmp_path, monkeypatch):
    from federated.runtime import ClientRuntime

    def diverges(self, round_idx, downloads, personal, side_wanted):
        from dassl.engine import NonFiniteLossError

        raise NonFiniteLossError("loss is nan (client 0, round 1)", {"client": 0, "round": 1})

    monkeypatch.setattr(ClientRuntime, "train", diverges)
    with pytest.raises(TrainingDiverged, match="No round finished, so there is no checkpoint; lower OPTIM.LR"):
        main(fast_args(tmp_path, ARGS))
    assert not (tmp_path / "checkpoint.pt").exists()


# ---------------------------------------------------------------- unwritable or full output folders
def test_output_folder_under_a_regular_file_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    target = tmp_path / "file" / "run"
    with pytest.raises(OutputError, match=r"cannot create the output folder .*file/run: Not a directory"):
        main(fast_args(target, ARGS))
    proc = subprocess.run([sys.executable, os.path.join(REPO, "federated_main.py"), *fast_args(target, ARGS)],
                          cwd=REPO, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: cannot create the output folder")


def test_a_failed_checkpoint_write_keeps_the_earlier_checkpoint(finished, tmp_path, monkeypatch):
    from dassl.engine import trainer as engine

    run = _copy(finished, tmp_path)
    before = (run / "checkpoint.pt").read_bytes()

    def disk_full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(engine._WriteErrors, "write", disk_full, raising=True)
    with pytest.raises(OutputError, match=r"cannot write .*checkpoint.pt: No space left on device; the files "
                                          r"written before are intact"):
        main(fast_args(run, [*ARGS, "--rounds", "2", "--resume"]))
    assert (run / "checkpoint.pt").read_bytes() == before
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]


@contextlib.contextmanager
def _tmpfs(path, size: str):
    """A tmpfs of ``size`` mounted at ``path`` (skips the test where mounting is not allowed)."""
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(folder, leave: int) -> None:
    """Fill the file system of ``folder`` until about ``leave`` bytes are free."""
    with open(os.path.join(folder, "filler"), "wb") as f:
        while True:
            free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
            if free <= leave:
                break
            try:
                f.write(b"\0" * min(free - leave, 1 << 16))
                f.flush()
            except OSError:
                break


def test_full_file_system_ends_in_one_clear_message(finished, tmp_path):
    with _tmpfs(tmp_path / "mnt", "4m") as mnt:
        run = mnt / "run"
        shutil.copytree(finished, run)
        before = _snapshot(run)
        _fill(mnt, 0)
        with pytest.raises(OutputError, match=r"is not writable: No space left on device"):
            main(fast_args(run, [*ARGS, "--rounds", "2", "--resume"]))
        assert _snapshot(run) == before
        os.remove(mnt / "filler")
        _fill(mnt, 24 * 1024)  # room for the start-up files, not for every round's files
        with pytest.raises(OutputError, match=r"cannot write .*: No space left on device; the files written "
                                              r"before are intact"):
            main(fast_args(run, [*ARGS, "--rounds", "4", "--resume"]))
        ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
        saved = json.loads((run / "results.json").read_text())
        assert len(saved["rounds"]) >= ckpt["round"] >= 1  # the checkpoint and results are whole files
        assert not [p.name for p in run.iterdir() if ".tmp" in p.name]


def test_read_only_output_folder_ends_in_one_clear_message(finished, tmp_path):
    if os.geteuid() != 0:  # permissions stop an ordinary user
        run = _copy(finished, tmp_path)
        before = _snapshot(run)
        os.chmod(run, 0o555)
        try:
            with pytest.raises(OutputError, match="is not writable: Permission denied"):
                main(fast_args(run, [*ARGS, "--rounds", "2", "--resume"]))
        finally:
            os.chmod(run, 0o755)
        assert _snapshot(run) == before
        return
    with _tmpfs(tmp_path / "mnt", "4m") as mnt:  # root ignores permissions: a read-only file system
        run = mnt / "run"
        shutil.copytree(finished, run)
        before = _snapshot(run)
        assert subprocess.run(["mount", "-o", "remount,ro", str(mnt)]).returncode == 0
        with pytest.raises(OutputError, match="is not writable: Read-only file system"):
            main(fast_args(run, [*ARGS, "--rounds", "2", "--resume"]))
        assert _snapshot(run) == before
