"""Every trainer module; importing this package registers them in ``TRAINER_REGISTRY``."""
from trainers import (  # noqa: F401
    celora,
    cocoop,
    coop,
    dpfpl,
    feature_heads,
    fedmaple,
    fedotp,
    fedpgp,
    fedpha,
    fedtv,
    flora,
    kgcoop,
    pfedmma,
    promptfolio,
    promptprox,
    zsclip,
)
