"""Dassl's default configuration tree, rebuilt from its documented keys and default values.

``get_cfg_default()`` builds a brand-new, unfrozen ``CfgNode`` on every call, so callers can
``merge_from_file`` / ``merge_from_list`` / add nodes (``set_new_allowed(True)`` or plain attribute
assignment on an unfrozen node) and finally ``freeze()`` it without affecting other callers.

One key is added on top of Dassl: ``OPTIM.ADAM_EPS`` (Adam's epsilon, 1e-8 like torch; FLoRA uses
1e-6).
"""
from __future__ import annotations

from yacs.config import CfgNode as CN


def _input() -> CN:
    node = CN()
    node.SIZE = (224, 224)  # (H, W) of the network input
    node.INTERPOLATION = "bilinear"  # bilinear | bicubic | nearest
    node.TRANSFORMS = ()  # names understood by dassl.data.transforms.build_transform
    node.NO_TRANSFORM = False  # no augmentation at all: resize + to-tensor only
    node.PIXEL_MEAN = [0.485, 0.456, 0.406]  # ImageNet statistics (Dassl's default)
    node.PIXEL_STD = [0.229, 0.224, 0.225]
    node.CROP_PADDING = 4  # padding of "random_crop"
    node.RRCROP_SCALE = (0.08, 1.0)  # scale range of "random_resized_crop"
    node.CUTOUT_N = 1
    node.CUTOUT_LEN = 16
    node.GN_MEAN = 0.0
    node.GN_STD = 0.15
    node.RANDAUGMENT_N = 2
    node.RANDAUGMENT_M = 10
    node.COLORJITTER_B = 0.4
    node.COLORJITTER_C = 0.4
    node.COLORJITTER_S = 0.4
    node.COLORJITTER_H = 0.1
    node.RGS_P = 0.2  # probability of "random_gray"
    node.GB_P = 0.5  # probability of "gaussian_blur"
    node.GB_K = 21  # kernel size of "gaussian_blur"
    return node


def _dataset() -> CN:
    node = CN()
    node.ROOT = ""
    node.NAME = ""
    node.SOURCE_DOMAINS = ()
    node.TARGET_DOMAINS = ()
    node.NUM_LABELED = -1
    node.NUM_SHOTS = -1  # -1: use all training images
    node.VAL_PERCENT = 0.1
    node.STL10_FOLD = -1
    node.CIFAR_C_TYPE = ""
    node.CIFAR_C_LEVEL = 1
    node.ALL_AS_UNLABELED = False
    return node


def _loader_node(sampler: str, batch_size: int) -> CN:
    node = CN()
    node.SAMPLER = sampler
    node.BATCH_SIZE = batch_size
    node.N_DOMAIN = 0  # domains per batch (domain-balanced samplers)
    node.N_INS = 16  # instances per class (class-balanced samplers)
    return node


def _dataloader() -> CN:
    node = CN()
    node.NUM_WORKERS = 4
    node.K_TRANSFORMS = 1  # number of augmented views per image
    node.RETURN_IMG0 = False  # also return the un-augmented image
    node.TRAIN_X = _loader_node("RandomSampler", 32)
    node.TRAIN_U = _loader_node("RandomSampler", 32)
    node.TRAIN_U.SAME_AS_X = True
    node.TEST = CN()
    node.TEST.SAMPLER = "SequentialSampler"
    node.TEST.BATCH_SIZE = 32
    return node


def _model() -> CN:
    node = CN()
    node.INIT_WEIGHTS = ""
    node.BACKBONE = CN()
    node.BACKBONE.NAME = ""
    node.BACKBONE.PRETRAINED = True
    node.HEAD = CN()
    node.HEAD.NAME = ""
    node.HEAD.HIDDEN_LAYERS = ()
    node.HEAD.ACTIVATION = "relu"
    node.HEAD.BN = True
    node.HEAD.DROPOUT = 0.0
    return node


def _optim() -> CN:
    node = CN()
    node.NAME = "adam"  # sgd | adam | adamw | amsgrad | rmsprop | radam
    node.LR = 0.0003
    node.WEIGHT_DECAY = 5e-4
    node.MOMENTUM = 0.9
    node.SGD_DAMPNING = 0
    node.SGD_NESTEROV = False
    node.RMSPROP_ALPHA = 0.99
    node.ADAM_BETA1 = 0.9
    node.ADAM_BETA2 = 0.999
    node.ADAM_EPS = 1e-8  # not in Dassl; FLoRA uses 1e-6
    node.STAGED_LR = False  # different LR for NEW_LAYERS and the rest
    node.NEW_LAYERS = ()
    node.BASE_LR_MULT = 0.1
    node.LR_SCHEDULER = "single_step"  # single_step | multi_step | cosine
    node.STEPSIZE = (-1,)  # -1 (single_step): step once, at MAX_EPOCH
    node.GAMMA = 0.1
    node.MAX_EPOCH = 10
    node.WARMUP_EPOCH = -1  # > 0 enables warmup
    node.WARMUP_TYPE = "linear"  # linear | constant
    node.WARMUP_CONS_LR = 1e-5
    node.WARMUP_MIN_LR = 1e-5
    node.WARMUP_RECOUNT = True  # restart the main schedule's epoch count after warmup
    return node


def _train() -> CN:
    node = CN()
    node.CHECKPOINT_FREQ = 0  # 0: save only the last epoch
    node.PRINT_FREQ = 10
    node.COUNT_ITER = "train_x"  # train_x | train_u | smaller_one
    return node


def _test() -> CN:
    node = CN()
    node.EVALUATOR = "Classification"
    node.PER_CLASS_RESULT = False
    node.COMPUTE_CMAT = False
    node.NO_TEST = False
    node.SPLIT = "test"  # val | test
    node.FINAL_MODEL = "last_step"  # last_step | best_val
    return node


def _build() -> CN:
    cfg = CN()
    cfg.VERSION = 1
    cfg.OUTPUT_DIR = "./output"
    cfg.RESUME = ""
    cfg.SEED = -1  # < 0: do not seed
    cfg.USE_CUDA = True
    cfg.VERBOSE = True
    cfg.INPUT = _input()
    cfg.DATASET = _dataset()
    cfg.DATALOADER = _dataloader()
    cfg.MODEL = _model()
    cfg.OPTIM = _optim()
    cfg.TRAIN = _train()
    cfg.TEST = _test()
    cfg.TRAINER = CN()
    cfg.TRAINER.NAME = ""
    return cfg


def get_cfg_default() -> CN:
    """Return a new, unfrozen ``CfgNode`` holding Dassl's default configuration.

    Every call builds an independent tree; mutating or freezing one never affects another.
    """
    return _build()
