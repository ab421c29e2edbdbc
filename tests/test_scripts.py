"""Every table script: --dry-run prints its commands and writes nothing; its toy-world miniature runs end to
end (in process, random tiny CLIP, 1 round) and writes its table and plots, whose numbers are the runs';
finished runs are skipped, --force re-runs them, an interrupted one resumes; bad selections are refused."""
from __future__ import annotations

import csv
import importlib.util
import json
import os

import pytest

from tests.fedtv_testing import REPO
from tools.run_folder import run_state

#: script -> the axis subset its miniature test runs (small: ~2-4 runs of one round each)
SCRIPTS = {
    "table1_base2novel": ["--methods", "ZeroshotCLIP", "FedPGP"],
    "table_2026_base2novel": ["--methods", "PromptFolio", "FedPHA", "pFedMMA"],
    "table2_4_leave_one_domain_out": ["--methods", "FedPGP"],
    "table5_cifar_dirichlet": ["--methods", "PromptFL"],
    "table6_7_fedpgp_ablations": ["--variants", "full", "wo_negative"],
    "table11_fedpgp_rank_shots": ["--ranks", "1", "--shots", "1", "4"],
    "fedtv_ablations": ["--variants", "full", "wo_fusion"],
    "flora_iid_noniid": ["--methods", "FLoRA"],
    "flora_cost": ["--methods", "FedFFT", "FLoRA"],
    "celora_communication": [],
    "table_fedtpg_cross_class": ["--methods", "FedTPG"],
    "table_dpfpl_privacy": ["--variants", "eps0", "eps0.4"],
    "table_fedmvp_leave_domain_out": ["--methods", "FedMVP", "--domains", "sketch"],
}
FAST = ["--toy", "--in-process", "--clip-weights", "none", "--rounds", "1", "FED.ZS_REFERENCE", "False"]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", os.path.join(REPO, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EXPERIMENT


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_dry_run_prints_every_command_and_writes_nothing(name, tmp_path, capsys):
    exp = load(name)
    assert exp.cli(["--output-root", str(tmp_path / "out"), "--dry-run"]) == 0  # the paper's grid
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "federated_main" in ln or "tools.experiments" in ln]
    args = exp.parser().parse_args(["--output-root", str(tmp_path / "out")])
    assert len(lines) == len(exp.runs(args)) > 1
    assert all("--output-dir" in ln and "--backbone" in ln for ln in lines)
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_miniature_runs_end_to_end_and_reports(name, tmp_path):
    exp = load(name)
    root = str(tmp_path / "out")
    assert exp.cli(["--output-root", root, "--report", *SCRIPTS[name], *FAST]) == 0
    args = exp.parser().parse_args(["--output-root", root, *SCRIPTS[name], *FAST])
    runs = exp.runs(args)
    assert runs and all(run_state(r.output_dir) == "finished" for r in runs)
    report = os.path.join(root, "report")
    for ext in ("md", "csv", "tex"):
        assert os.path.getsize(os.path.join(report, f"{exp.table}.{ext}")) > 0
    for dataset in {r.key.get("dataset", "toyworld") for r in runs}:  # toyworld, or e.g. toyworld_mixture
        for kind in ("rounds", "clients", "bytes"):
            assert os.path.getsize(os.path.join(report, f"{dataset}_{kind}.png")) > 0
    summary = open(os.path.join(report, "README.md")).read()
    assert f"{len(runs)} of {len(runs)} runs finished" in summary
    # the table's Local cells are the runs' final Local accuracies (mean over the seeds of a cell)
    with open(os.path.join(report, f"{exp.table}_values.csv")) as f:
        means = {round(float(r["mean"]), 6) for r in csv.DictReader(f) if r["mean"]}
    for run in runs:
        with open(os.path.join(run.output_dir, "results.json")) as f:
            local = json.load(f)["final"]["local"]
        if len({r.key.get("seed") for r in runs}) == 1 and exp.table != "cost":
            assert round(local, 6) in means


def test_skip_force_and_resume(tmp_path, capsys):
    exp = load("table5_cifar_dirichlet")
    root = str(tmp_path / "out")
    flags = ["--output-root", root, "--methods", "PromptFL", "--seeds", "1", *FAST[:-2]]
    opts = FAST[-2:]  # KEY VALUE overrides come last
    assert exp.cli(flags + opts) == 0
    (run,) = exp.runs(exp.parser().parse_args(flags + opts))
    results = os.path.join(run.output_dir, "results.json")
    first = os.path.getmtime(results)
    capsys.readouterr()
    assert exp.cli(flags + opts) == 0
    assert "skip (finished)" in capsys.readouterr().out and os.path.getmtime(results) == first
    assert exp.cli(flags + ["--dry-run", "--force"] + opts) == 0
    out = capsys.readouterr().out
    assert "skip (finished)" not in out and "--resume" not in out and "would run 1" in out
    # an interrupted run (results of fewer rounds than configured) is continued with --resume
    with open(results) as f:
        data = json.load(f)
    data["config"]["OPTIM"]["ROUND"] = 2
    with open(results, "w") as f:
        json.dump(data, f)
    assert run_state(run.output_dir) == "partial"
    assert exp.cli(flags + ["--dry-run"] + opts) == 0
    assert "--resume true" in capsys.readouterr().out
    manifest = json.load(open(os.path.join(root, "manifest.json")))
    assert manifest["table"] == "dirichlet" and list(manifest["runs"]) == [os.path.relpath(run.output_dir, root)]


def test_bad_selection_is_refused(tmp_path, capsys):
    exp = load("table2_4_leave_one_domain_out")
    assert exp.cli(["--output-root", str(tmp_path), "--methods", "NoSuchMethod", "--dry-run"]) == 2
    assert "unknown NoSuchMethod" in capsys.readouterr().err
    assert exp.cli(["--output-root", str(tmp_path), "--datasets", "office", "--domains", "clipart", "--dry-run"]) == 2
    assert "no valid run" in capsys.readouterr().err
    assert load("table1_base2novel").cli(["--datasets", "nosuch", "--dry-run"]) == 2
    assert "no dataset config" in capsys.readouterr().err


@pytest.mark.parametrize("family,script,dataset", [("base2novel", "table1_base2novel", "oxford_pets"),
                                                   ("domains", "table2_4_leave_one_domain_out", "office"),
                                                   ("cifar", "table5_cifar_dirichlet", "cifar100"),
                                                   ("lora", "flora_iid_noniid", "cifar10")])
def test_shell_entry_per_dataset_family(family, script, dataset, tmp_path):
    """``bash scripts/FAMILY.sh DATASET SEED [METHOD ...]`` (the peers' form) runs that table script for one
    dataset and seed: the same commands as the Python script's own selection."""
    import subprocess
    import sys

    env = dict(os.environ, DRY_RUN="1", OUTPUT=str(tmp_path / "out"), DATA=str(tmp_path / "data"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    method = load(script).axes[1].full[-1]
    proc = subprocess.run(["bash", f"scripts/{family}.sh", dataset, "2", method], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if "tools.experiments exec" in ln]
    exp = load(script)
    args = exp.parser().parse_args(["--output-root", str(tmp_path / "out"), "--root", str(tmp_path / "data"),
                                    "--datasets", dataset, "--seeds", "2", "--methods", method])
    assert len(lines) == len(exp.runs(args)) >= 1
    assert all(f"configs/datasets/{dataset}.yaml" in ln and "--seed 2" in ln and f"--trainer {method}" in ln
               and f"--root {tmp_path / 'data'}" in ln for ln in lines)
    assert not os.path.exists(tmp_path / "out")
    usage = subprocess.run(["bash", f"scripts/{family}.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    assert usage.returncode != 0 and f"usage: bash scripts/{family}.sh DATASET SEED [METHOD ...]" in usage.stderr


def test_scripts_are_all_tested():
    names = {f[:-3] for f in os.listdir(os.path.join(REPO, "scripts")) if f.endswith(".py")}
    assert names == set(SCRIPTS)


#: flags whose values cannot make a config invalid (typed numbers, output places): left out of the comparison
_SAME_CONFIG = ("--seed", "--output-dir", "--root", "--rounds", "--local-epochs", "--num-shots", "--num-users",
                "--frac", "--beta", "--train-batch-size", "--target-domain")


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_every_paper_run_has_a_valid_config_with_its_method_hyper_parameters(name, tmp_path):
    """Each distinct configuration of the paper's grid passes the command line's checks (every file exists,
    every key and name is known) and its real-data input pipeline; a trainable method runs with a config
    file of its own (``<backbone>.yaml``, or its ViT-B/16 file where it ships none for the backbone), never
    silently with the framework's defaults."""
    from dassl.data.transforms import AVAI_CHOICES
    from federated.cli import build_cfg, check_args, parse_args
    from federated.config import default_trainer_config

    exp = load(name)
    distinct = {}
    for run in exp.runs(exp.parser().parse_args(["--output-root", str(tmp_path)])):
        flags = dict(zip(run.argv[::2], run.argv[1::2], strict=False))
        distinct.setdefault(tuple((k, v) for k, v in flags.items() if k not in _SAME_CONFIG), run)
    for run in distinct.values():
        args = parse_args(run.argv)
        check_args(args)
        cfg = build_cfg(args)
        trainer, backbone = cfg.TRAINER.NAME, cfg.MODEL.BACKBONE.NAME
        if trainer != "ZeroshotCLIP":
            assert args.config_file or default_trainer_config(trainer, backbone), f"{name}: {trainer} {backbone}"
        assert set(cfg.INPUT.TRANSFORMS) <= set(AVAI_CHOICES), f"{name}: {trainer} {cfg.INPUT.TRANSFORMS}"
        assert tuple(cfg.INPUT.SIZE) == (224, 224), f"{name}: {trainer} {backbone}"
