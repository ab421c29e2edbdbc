"""The command line: flags map to config keys, booleans parse properly, bad input gives clear errors."""
import argparse

import pytest

from federated.cli import build_cfg, parse_args, str2bool
from federated.config import backbone_slug
from federated.errors import ConfigError


def cfg_of(*argv):
    return build_cfg(parse_args(list(argv)))


def test_defaults_are_the_demo():
    cfg = cfg_of()
    assert cfg.DATASET.NAME == "ToyWorld"
    assert cfg.MODEL.BACKBONE.NAME == "tiny"
    assert cfg.TRAINER.NAME in ("PromptFL", "FedTV")
    assert cfg.DATASET.SUBSAMPLE_CLASSES == "base"


def test_each_flag_changes_only_its_key():
    base = cfg_of()
    changed = cfg_of("--num-users", "7", "--rounds", "3", "--frac", "0.5", "--seed", "5", "--beta", "0.1",
                     "--split-seed", "11", "--num-shots", "2", "--local-epochs", "4", "--lr", "0.01")
    assert (changed.DATASET.USERS, changed.OPTIM.ROUND, changed.FED.FRAC, changed.SEED) == (7, 3, 0.5, 5)
    assert (changed.DATASET.BETA, changed.DATASET.SPLIT_SEED, changed.DATASET.NUM_SHOTS) == (0.1, 11, 2)
    assert (changed.OPTIM.MAX_EPOCH, changed.OPTIM.LR) == (4, 0.01)
    assert changed.DATASET.PARTITION == base.DATASET.PARTITION
    assert changed.TRAINER.NAME == base.TRAINER.NAME


def test_published_underscore_spellings():
    cfg = cfg_of("--num_users", "4", "--num_shots", "8", "--local_epoch", "3", "--split_seed", "1")
    assert (cfg.DATASET.USERS, cfg.DATASET.NUM_SHOTS, cfg.OPTIM.MAX_EPOCH, cfg.DATASET.SPLIT_SEED) == (4, 8, 3, 1)


def test_integer_literal_sets_a_float_key():
    cfg = cfg_of("OPTIM.LR", "1", "FED.FRAC", "1")
    assert cfg.OPTIM.LR == 1.0 and isinstance(cfg.OPTIM.LR, float) and cfg.FED.FRAC == 1.0


def test_opts_override_flags_and_yaml():
    cfg = cfg_of("--rounds", "3", "OPTIM.ROUND", "9", "TRAINER.PROMPTFL.N_CTX", "4")
    assert cfg.OPTIM.ROUND == 9
    assert cfg.TRAINER.PROMPTFL.N_CTX == 4


@pytest.mark.parametrize("text,value", [("True", True), ("false", False), ("1", True), ("no", False)])
def test_str2bool(text, value):
    assert str2bool(text) is value


def test_str2bool_rejects_garbage():
    with pytest.raises(argparse.ArgumentTypeError):
        str2bool("maybe")


def test_boolean_flags():
    assert parse_args(["--resume"]).resume is True
    assert parse_args(["--resume", "False"]).resume is False
    assert parse_args(["--eval_only", "true"]).eval_only is True
    # a bare boolean flag never swallows what follows it
    args = parse_args(["--resume", "OPTIM.LR", "0.1"])
    assert args.resume is True and args.opts == ["OPTIM.LR", "0.1"]


def test_unknown_config_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown config key 'OPTIM.LRR'.*Did you mean LR"):
        cfg_of("OPTIM.LRR", "0.1")


def test_unknown_trainer_lists_registered_ones():
    with pytest.raises(ConfigError, match=r"unknown trainer 'Nope'.*PromptFL"):
        cfg_of("--trainer", "Nope")


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file not found"):
        cfg_of("--config-file", "does/not/exist.yaml")


def test_trainer_config_follows_trainer_and_backbone():
    cfg = cfg_of("--trainer", "CoOp")
    assert cfg.TRAINER.NAME == "CoOp"
    assert backbone_slug("ViT-B/16") == "vit_b16" and backbone_slug("RN50") == "rn50"


@pytest.mark.parametrize("backbone,dataset,size", [
    ("tiny", "configs/datasets/oxford_pets.yaml", 32),  # the real datasets' yamls say 224
    ("RN50", "configs/datasets/toyworld.yaml", 224),  # the toy world's images are 32 px
    ("ViT-B/16", "configs/datasets/toyworld.yaml", 224),
    ("ViT-L/14@336px", "configs/datasets/oxford_pets.yaml", 336),
])
def test_input_size_is_the_backbones_own(backbone, dataset, size):
    """A CLIP image tower takes only its own input size (a ViT's positional embedding, RN50's attention
    pool): INPUT.SIZE follows the backbone whatever the dataset yaml says, read without torch."""
    from federated.config import native_input_size

    cfg = cfg_of("--backbone", backbone, "--dataset-config-file", dataset)
    assert tuple(cfg.INPUT.SIZE) == (size, size) and native_input_size(backbone) == size
    assert native_input_size("no-such-model") is None


def test_a_published_coop_config_loads_and_its_ignored_keys_are_named_once(tmp_path, caplog):
    """CoOp's trainer configs set TRAIN.PRINT_FREQ (FedTV prints one line per round): the file loads, and one
    warning line names the keys FedTV ignores; a config that leaves them at their defaults warns nothing."""
    import logging

    from federated.cli import check_args

    coop = tmp_path / "coop_vit_b16.yaml"
    coop.write_text("DATALOADER:\n  TRAIN_X:\n    BATCH_SIZE: 32\n  TEST:\n    BATCH_SIZE: 100\n"
                    "OPTIM:\n  NAME: sgd\n  LR: 0.002\nTRAIN:\n  PRINT_FREQ: 5\n"
                    "MODEL:\n  BACKBONE:\n    NAME: ViT-B/16\n  INIT_WEIGHTS: ''\n")
    args = parse_args(["--config-file", str(coop), "--backbone", "tiny"])
    with caplog.at_level(logging.WARNING, logger="fedtv"):
        check_args(args)  # the torch-free pre-check does not warn
        cfg = build_cfg(args)
    assert cfg.DATALOADER.TEST.BATCH_SIZE == 100 and cfg.TRAIN.PRINT_FREQ == 5
    warnings = [r.getMessage() for r in caplog.records if "ignored by FedTV" in r.getMessage()]
    assert warnings == ["config keys accepted for Dassl / CoOp files but ignored by FedTV: TRAIN.PRINT_FREQ"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedtv"):
        cfg_of()
    assert not [r for r in caplog.records if "ignored by FedTV" in r.getMessage()]
