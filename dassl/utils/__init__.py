"""Utilities shared by the whole framework (Dassl's ``dassl.utils``)."""
from .logger import Logger, configure_logging, reset_logger, setup_logger
from .registry import Registry
from .tools import listdir_nohidden, mkdir_if_missing, read_image, read_json, set_random_seed, write_json
from .torchtools import load_checkpoint, load_pretrained_weights

__all__ = [
    "Logger",
    "Registry",
    "configure_logging",
    "listdir_nohidden",
    "load_checkpoint",
    "load_pretrained_weights",
    "mkdir_if_missing",
    "read_image",
    "read_json",
    "reset_logger",
    "set_random_seed",
    "setup_logger",
    "write_json",
]
