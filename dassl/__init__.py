"""FedTV's own re-implementation of the public API of Dassl.pytorch.

Subpackages are imported on demand (``from dassl.config import get_cfg_default``, ...); importing
``dassl`` itself is cheap and has no side effects.
"""

__version__ = "0.1.0"
