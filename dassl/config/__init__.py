"""Configuration: ``get_cfg_default()`` returns a fresh yacs ``CfgNode`` with Dassl's key tree."""
from yacs.config import CfgNode

from .defaults import get_cfg_default

__all__ = ["CfgNode", "get_cfg_default"]
