"""Flower run config / node config -> yacs config and node identity; clear errors."""
import pytest

pytest.importorskip("flwr", reason="Flower is optional: pip install -r requirements-flower.txt")

from federated.errors import ConfigError  # noqa: E402
from federated.flower.settings import (  # noqa: E402
    cfg_from_run_config,
    cfg_from_text,
    cfg_to_text,
    node_identity,
    resume_requested,
    run_setting,
)
from federated.run import main  # noqa: E402
from tests.fedtv_testing import fast_args  # noqa: E402


def test_run_config_gives_the_command_line_config():
    cfg = cfg_from_run_config({"opts": "--trainer FedPGP --num-users 4 OPTIM.LR 0.01"}, data_root="/data/x",
                              clip_weights="none")
    assert cfg.TRAINER.NAME == "FedPGP" and cfg.DATASET.USERS == 4 and cfg.OPTIM.LR == 0.01
    assert cfg.DATASET.ROOT == "/data/x" and cfg.MODEL.BACKBONE.WEIGHTS == "none"  # the node's paths win
    assert cfg.DATASET.NAME == "ToyWorld"  # the default dataset-config
    again = cfg_from_text(cfg_to_text(cfg))
    assert again.dump() == cfg.dump()


def test_bad_run_and_node_config_fail_clearly():
    with pytest.raises(ConfigError, match="unknown config key 'OPTIM.NOPE'"):
        cfg_from_run_config({"opts": "OPTIM.NOPE 1"})
    with pytest.raises(ConfigError, match="--eval-only is not available in Flower runs"):
        cfg_from_run_config({"opts": "--eval-only --model-dir /x"})
    with pytest.raises(ConfigError, match="config file not found"):
        cfg_from_run_config({"dataset-config": "configs/datasets/missing.yaml"})
    with pytest.raises(ConfigError, match="round-timeout' must be a float"):
        run_setting({"round-timeout": "soon"}, "round-timeout")
    with pytest.raises(ConfigError, match="client-id"):
        node_identity({"data-root": "/data"})
    with pytest.raises(ConfigError, match="must be an integer"):
        node_identity({"client-id": "first"})
    ident = node_identity({"partition-id": 2, "state-dir": "/s"})
    assert ident.client_id == 2 and ident.state_dir == "/s"


def test_resume_is_read_from_the_opts():
    assert resume_requested({"opts": "--trainer FedPGP --resume"})
    assert resume_requested({"opts": "--resume true OPTIM.LR 0.01"})
    assert not resume_requested({"opts": "--trainer FedPGP --resume False"})
    assert not resume_requested({})
    cfg = cfg_from_run_config({"opts": "--resume --trainer FedPGP"}, clip_weights="none")
    assert cfg.TRAINER.NAME == "FedPGP"  # --resume is no config key


def test_flower_engine_refuses_eval_only(tmp_path):
    with pytest.raises(ConfigError, match="--eval-only uses --engine inprocess"):
        main(fast_args(tmp_path, ["--engine", "flower-sim", "--eval-only", "--model-dir", str(tmp_path)]))
