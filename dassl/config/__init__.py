"""Configuration: ``get_cfg_default()`` returns a fresh yacs ``CfgNode`` with Dassl's key tree."""
from yacs.config import CfgNode

from .defaults import IGNORED_KEYS, RETIRED_KEYS, get_cfg_default, ignored_keys_set

__all__ = ["IGNORED_KEYS", "RETIRED_KEYS", "CfgNode", "get_cfg_default", "ignored_keys_set"]
