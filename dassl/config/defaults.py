"""Dassl's default configuration tree, rebuilt from its documented keys and default values.

``get_cfg_default()`` builds a brand-new, unfrozen ``CfgNode`` on every call, so callers can
``merge_from_file`` / ``merge_from_list`` / add nodes (``set_new_allowed(True)`` or plain attribute
assignment on an unfrozen node) and finally ``freeze()`` it without affecting other callers.

One key is added on top of Dassl: ``OPTIM.ADAM_EPS`` (Adam's epsilon, 1e-8 like torch; FLoRA uses
1e-6). Dassl keys that nothing in FedTV reads and no published Dassl / CoOp config file sets are left out
(a file setting one is refused as an unknown key); those that published files or a ported CoOp trainer set
or read are kept, accepted and ignored: :data:`IGNORED_KEYS` lists them, and :func:`ignored_keys_set`
names the ones a config changed (the command line warns about them).
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
    return node




def _dataloader() -> CN:
    node = CN()
    node.NUM_WORKERS = 4
    node.K_TRANSFORMS = 1  # number of augmented views per image
    node.RETURN_IMG0 = False  # also return the un-augmented image
    node.TRAIN_X = CN()
    node.TRAIN_X.SAMPLER = "RandomSampler"  # ignored (IGNORED_KEYS): training loaders shuffle
    node.TRAIN_X.BATCH_SIZE = 32
    node.TRAIN_U = CN()  # ignored (IGNORED_KEYS): no unlabelled data
    node.TRAIN_U.BATCH_SIZE = 32
    node.TRAIN_U.SAME_AS_X = True
    node.TEST = CN()
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
    node.PRINT_FREQ = 10
    node.COUNT_ITER = "train_x"  # train_x | train_u | smaller_one
    return node


def _test() -> CN:
    node = CN()
    node.EVALUATOR = "Classification"
    node.PER_CLASS_RESULT = False
    node.COMPUTE_CMAT = False
    node.SPLIT = "test"  # val | test
    return node


def _build() -> CN:
    cfg = CN()
    cfg.VERSION = 1
    cfg.OUTPUT_DIR = "./output"
    cfg.SEED = -1  # < 0: do not seed
    cfg.USE_CUDA = True
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


#: Dassl keys FedTV accepts (so that Dassl / CoOp config files load) and ignores: nothing reads them. Key ->
#: who sets or reads it. Setting one to a value other than its default logs a warning (``ignored_keys_set``).
IGNORED_KEYS: dict[str, str] = {
    "DATASET.SOURCE_DOMAINS": "Dassl / CoOp train.py (FedTV: DATASET.PARTITION domain, DATASET.TARGET_DOMAIN)",
    "DATASET.TARGET_DOMAINS": "Dassl / CoOp train.py (FedTV: DATASET.TARGET_DOMAIN)",
    "DATASET.NUM_LABELED": "Dassl's semi-supervised dataset configs",
    "DATASET.VAL_PERCENT": "Dassl's semi-supervised dataset configs",
    "DATASET.STL10_FOLD": "Dassl's STL-10 config",
    "DATASET.CIFAR_C_TYPE": "Dassl's CIFAR-C configs",
    "DATASET.CIFAR_C_LEVEL": "Dassl's CIFAR-C configs",
    "DATALOADER.TRAIN_X.SAMPLER": "Dassl's configs (FedTV's training loaders shuffle: RandomSampler)",
    "DATALOADER.TRAIN_U.BATCH_SIZE": "Dassl's semi-supervised / adaptation configs",
    "DATALOADER.TRAIN_U.SAME_AS_X": "Dassl's semi-supervised / adaptation configs",
    "MODEL.INIT_WEIGHTS": "a ported CoOp trainer's build_model (dassl.utils.load_pretrained_weights)",
    "MODEL.BACKBONE.PRETRAINED": "Dassl's configs (FedTV: MODEL.BACKBONE.WEIGHTS)",
    "MODEL.HEAD.NAME": "Dassl's configs",
    "MODEL.HEAD.HIDDEN_LAYERS": "Dassl's configs",
    "MODEL.HEAD.DROPOUT": "Dassl's configs",
    "TRAIN.PRINT_FREQ": "CoOp's and Dassl's trainer configs (FedTV prints one line per round)",
    "TRAIN.COUNT_ITER": "Dassl's semi-supervised configs",
}


#: Dassl keys left out of the tree (nothing read them, no published file sets them). A run written before
#: they were left out still resumes (``federated.checkpoint.check_resume_config`` skips them).
RETIRED_KEYS: tuple[str, ...] = (
    "RESUME", "VERBOSE", "INPUT.CUTOUT_N", "INPUT.CUTOUT_LEN", "INPUT.GN_MEAN", "INPUT.GN_STD",
    "INPUT.RANDAUGMENT_N", "INPUT.RANDAUGMENT_M", "DATASET.ALL_AS_UNLABELED", "DATALOADER.TRAIN_X.N_DOMAIN",
    "DATALOADER.TRAIN_X.N_INS", "DATALOADER.TRAIN_U.SAMPLER", "DATALOADER.TRAIN_U.N_DOMAIN",
    "DATALOADER.TRAIN_U.N_INS", "DATALOADER.TEST.SAMPLER", "MODEL.HEAD.ACTIVATION", "MODEL.HEAD.BN",
    "TRAIN.CHECKPOINT_FREQ", "TEST.NO_TEST", "TEST.FINAL_MODEL",
)


def _lookup(cfg: CN, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return list(cfg) if isinstance(cfg, tuple | list) else cfg


def ignored_keys_set(cfg: CN) -> list[str]:
    """The :data:`IGNORED_KEYS` whose value in ``cfg`` differs from the default (in ``IGNORED_KEYS`` order)."""
    default = _build()
    return [k for k in IGNORED_KEYS if _lookup(cfg, k) != _lookup(default, k)]


def get_cfg_default() -> CN:
    """Return a new, unfrozen ``CfgNode`` holding Dassl's default configuration.

    Every call builds an independent tree; mutating or freezing one never affects another.
    """
    return _build()
