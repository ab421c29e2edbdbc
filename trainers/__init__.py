"""Every trainer module; importing this package registers them in ``TRAINER_REGISTRY``."""
from trainers import (  # noqa: F401
    celora,
    cocoop,
    coop,
    fedmaple,
    fedotp,
    fedpgp,
    fedtv,
    feature_heads,
    flora,
    kgcoop,
    promptprox,
    zsclip,
)
