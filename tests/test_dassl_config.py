"""Tests for dassl.config.get_cfg_default."""
import pytest
from yacs.config import CfgNode

from dassl.config import get_cfg_default


def test_dassl_defaults():
    cfg = get_cfg_default()
    assert isinstance(cfg, CfgNode)
    assert cfg.SEED == -1 and cfg.USE_CUDA is True and cfg.RESUME == ""
    assert tuple(cfg.INPUT.SIZE) == (224, 224)
    assert cfg.INPUT.INTERPOLATION == "bilinear"
    assert tuple(cfg.INPUT.TRANSFORMS) == ()
    assert list(cfg.INPUT.PIXEL_MEAN) == [0.485, 0.456, 0.406]
    assert list(cfg.INPUT.PIXEL_STD) == [0.229, 0.224, 0.225]
    assert tuple(cfg.INPUT.RRCROP_SCALE) == (0.08, 1.0)
    assert cfg.DATASET.ROOT == "" and cfg.DATASET.NUM_SHOTS == -1 and cfg.DATASET.VAL_PERCENT == 0.1
    assert cfg.DATALOADER.NUM_WORKERS == 4 and cfg.DATALOADER.K_TRANSFORMS == 1
    assert cfg.DATALOADER.TRAIN_X.SAMPLER == "RandomSampler" and cfg.DATALOADER.TRAIN_X.BATCH_SIZE == 32
    assert cfg.DATALOADER.TEST.SAMPLER == "SequentialSampler" and cfg.DATALOADER.TEST.BATCH_SIZE == 32
    assert cfg.MODEL.BACKBONE.NAME == "" and cfg.MODEL.BACKBONE.PRETRAINED is True
    o = cfg.OPTIM
    assert (o.NAME, o.LR, o.WEIGHT_DECAY, o.MOMENTUM) == ("adam", 0.0003, 5e-4, 0.9)
    assert (o.SGD_DAMPNING, o.SGD_NESTEROV, o.RMSPROP_ALPHA) == (0, False, 0.99)
    assert (o.ADAM_BETA1, o.ADAM_BETA2, o.ADAM_EPS) == (0.9, 0.999, 1e-8)
    assert (o.LR_SCHEDULER, tuple(o.STEPSIZE), o.GAMMA, o.MAX_EPOCH) == ("single_step", (-1,), 0.1, 10)
    assert (o.WARMUP_EPOCH, o.WARMUP_TYPE, o.WARMUP_CONS_LR, o.WARMUP_MIN_LR, o.WARMUP_RECOUNT) == (
        -1, "linear", 1e-5, 1e-5, True)
    assert (cfg.TRAIN.CHECKPOINT_FREQ, cfg.TRAIN.PRINT_FREQ, cfg.TRAIN.COUNT_ITER) == (0, 10, "train_x")
    t = cfg.TEST
    assert (t.EVALUATOR, t.PER_CLASS_RESULT, t.COMPUTE_CMAT, t.NO_TEST, t.SPLIT, t.FINAL_MODEL) == (
        "Classification", False, False, False, "test", "last_step")
    assert cfg.TRAINER.NAME == ""


def test_each_call_is_independent_and_unfrozen():
    a, b = get_cfg_default(), get_cfg_default()
    assert not a.is_frozen()
    a.OPTIM.LR = 0.5
    a.INPUT.SIZE = (32, 32)
    assert b.OPTIM.LR == 0.0003 and tuple(b.INPUT.SIZE) == (224, 224)
    assert get_cfg_default().OPTIM.LR == 0.0003


def test_merge_from_list_and_file_then_freeze(tmp_path):
    cfg = get_cfg_default()
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("OPTIM:\n  NAME: sgd\n  LR: 0.002\nINPUT:\n  SIZE: (32, 32)\n")
    cfg.merge_from_file(str(yaml_path))
    cfg.merge_from_list(["OPTIM.MAX_EPOCH", "50", "DATASET.NAME", "Toy"])
    assert (cfg.OPTIM.NAME, cfg.OPTIM.LR, cfg.OPTIM.MAX_EPOCH, cfg.DATASET.NAME) == ("sgd", 0.002, 50, "Toy")
    assert tuple(cfg.INPUT.SIZE) == (32, 32)
    with pytest.raises(AssertionError, match="Non-existent key: OPTIM.NOT_A_KEY"):  # yacs' own check
        cfg.merge_from_list(["OPTIM.NOT_A_KEY", "1"])
    cfg.freeze()
    with pytest.raises(AttributeError):
        cfg.OPTIM.LR = 1.0


def test_new_nodes_can_be_added():
    cfg = get_cfg_default()
    cfg.TRAINER.COOP = CfgNode()
    cfg.TRAINER.COOP.N_CTX = 16
    cfg.DATASET.SUBSAMPLE_CLASSES = "all"
    cfg.merge_from_list(["TRAINER.COOP.N_CTX", "4", "DATASET.SUBSAMPLE_CLASSES", "base"])
    assert cfg.TRAINER.COOP.N_CTX == 4 and cfg.DATASET.SUBSAMPLE_CLASSES == "base"
    cfg.set_new_allowed(True)
    cfg.merge_from_other_cfg(CfgNode({"FED": {"ROUNDS": 3}}, new_allowed=True))
    assert cfg.FED.ROUNDS == 3
