"""Every trainer module; importing this package registers them in ``TRAINER_REGISTRY``."""
from trainers import coop, fedpgp, zsclip  # noqa: F401
from trainers import fedtv  # noqa: F401
from trainers import cocoop, kgcoop, promptprox  # noqa: F401
from trainers import celora, feature_heads, flora  # noqa: F401
from trainers import fedmaple, fedotp  # noqa: F401
