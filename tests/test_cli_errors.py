"""Bad input ends with one clear line on stderr and exit code 2, never a traceback."""
import os
import subprocess
import sys

import pytest

from dassl.data.datasets import DATASET_REGISTRY, DatasetBase
from federated.errors import DataError
from federated.run import main
from tests.fedtv_testing import REPO, fast_args


def run_cli(*argv):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, os.path.join(REPO, "federated_main.py"), *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("argv,message", [
    (["--trainer", "Nope"], "unknown trainer 'Nope'"),
    (["OPTIM.NOPE", "1"], "unknown config key 'OPTIM.NOPE'"),
    (["--num-users", "40", "--clip-weights", "none"], "--num-users 40 is larger"),
    (["--eval-only"], "--eval-only needs --model-dir"),
])
def test_cli_errors_are_one_clear_line(tmp_path, argv, message):
    proc = run_cli("--output-dir", str(tmp_path), *argv)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert message in proc.stderr


@DATASET_REGISTRY.register()
class NeedsRootForTest(DatasetBase):
    """A dataset that reads files under the data root (never reached: the root is missing)."""


def test_missing_data_root_says_how_to_prepare(tmp_path):
    with pytest.raises(DataError, match="data root .*does not exist.*--root"):
        main(fast_args(tmp_path, ["--root", str(tmp_path / "nowhere")], ["DATASET.NAME", "NeedsRootForTest"]))


def test_too_many_users_for_the_pathological_split(tmp_path):
    # 12 classes -> 6 base classes: 7 clients cannot each own a class
    with pytest.raises(DataError, match="--num-users 7"):
        main(fast_args(tmp_path, ["--num-users", "7"]))
