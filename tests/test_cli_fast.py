"""A mistake on the command line is reported in about a second: ``--help`` and every flag, name and
config-key error are checked against ``federated/catalog.json`` before torch is imported."""
import json
import os
import subprocess
import sys

import pytest

from federated import catalog
from federated.cli import build_cfg, parse_args, resolve_backbone
from federated.config import ConfigError
from tests.fedtv_testing import REPO

# Runs the script as a user does, then reports whether torch was imported and the CPU seconds spent.
PROBE = """
import json, resource, runpy, sys
sys.argv = ["federated_main.py", *json.loads(sys.argv[1])]
try:
    runpy.run_path("federated_main.py", run_name="__main__")
    code = 0
except SystemExit as e:
    code = e.code
use = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"torch": "torch" in sys.modules, "cpu": use.ru_utime + use.ru_stime, "code": code}),
      file=sys.stderr)
"""


def run_fast(argv):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    *lines, probe = proc.stderr.strip().splitlines()
    return proc.stdout, lines, json.loads(probe)


@pytest.mark.parametrize("argv,message", [
    (["--trainer", "FedTv"], "unknown trainer 'FedTv'. Did you mean FedTV?"),
    (["OPTIM.NOPE", "1"], "unknown config key 'OPTIM.NOPE'"),
    (["TRAINER.FEDPGP.BOTTLENEK", "4"], "Did you mean BOTTLENECK"),
    (["--partition", "dirichelt"], "unknown partition 'dirichelt'"),
    (["--subsample", "novel"], "--subsample 'novel' is not one of all, base, new"),
    (["--eval-only", "--model-dir", "output/nope"], "--model-dir output/nope does not exist"),
    (["--eval-only"], "--eval-only needs --model-dir"),
    (["--backbone", "vit_b17"], "unknown backbone 'vit_b17'. Did you mean ViT-B/16?"),
    (["--dataset-config-file", "configs/datasets/nope.yaml"], "Available: configs/datasets/caltech101.yaml"),
    (["--config-file", "nope.yaml"], "config file not found: nope.yaml"),
    (["OPTIM.LR", "0.1", "--rounds", "3"], "'--rounds' comes after the KEY VALUE overrides (OPTIM.LR 0.1): flags go "
                                           "before the overrides"),
    (["OPTIM.ROUND", "many"], "bad value in opts"),
    (["DATASET.NAME", "OxfordPet"], "unknown dataset 'OxfordPet'. Did you mean OxfordPets?"),
    (["INPUT.TRANSFORMS", "['resize', 'center_crop']"], "unknown transform 'resize' in INPUT.TRANSFORMS. Valid: "),
    (["INPUT.TRANSFORMS", "['random_flip', 'normalise']"], "'normalise' in INPUT.TRANSFORMS. Did you mean normalize?"),
    (["INPUT.INTERPOLATION", "bicubc"], "unknown INPUT.INTERPOLATION 'bicubc'. Did you mean bicubic?"),
])
def test_mistakes_are_one_line_without_importing_torch(argv, message):
    out, err, probe = run_fast(argv)
    assert probe["code"] == 2, (out, err)
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not probe["torch"], "torch was imported before the mistake was reported"
    assert probe["cpu"] < 2.0, probe


def test_help_is_fast_and_current():
    out, err, probe = run_fast(["--help"])
    assert probe["code"] == 0 and not probe["torch"] and probe["cpu"] < 2.0, probe
    assert "(default FedTV)" in out and "PromptFL)" not in out.split("--trainer")[1].split("--backbone")[0]
    assert "--eval-only [true|false]" in out and "--resume [true|false]" in out
    assert "EVAL_ONLY" not in out and "RESUME" not in out


def test_bad_flag_value_is_argparse_usage_without_torch():
    _, err, probe = run_fast(["--num-users", "x"])
    assert probe["code"] == 2 and not probe["torch"]
    assert "invalid int value: 'x'" in err[-1]


def test_catalog_is_current():
    """The shipped catalogue equals what the registries give (else: python -m federated.catalog)."""
    # in a fresh process: this one may hold the test-suite's own datasets and trainers
    code = "import json; from federated import catalog; print(json.dumps(catalog.compute()))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    fresh = json.loads(proc.stdout.strip().splitlines()[-1])
    assert fresh == catalog.load(), "federated/catalog.json is stale: run python -m federated.catalog"


@pytest.mark.parametrize("spelling", ["vit_b16", "ViT-B/16", "vit-b/16", "VIT_B16"])
def test_backbone_slug_spellings(spelling):
    assert resolve_backbone(spelling, catalog.load()["backbones"]) == "ViT-B/16"
    cfg = build_cfg(parse_args(["--backbone", spelling, "--clip-weights", "none"]))
    assert cfg.MODEL.BACKBONE.NAME == "ViT-B/16"


def test_open_clip_spellings_are_kept():
    assert resolve_backbone("ViT-B-16", catalog.load()["backbones"]) == "ViT-B-16"
    with pytest.raises(ConfigError, match="unknown backbone 'RN51'. Did you mean RN50"):
        resolve_backbone("RN51", catalog.load()["backbones"])
