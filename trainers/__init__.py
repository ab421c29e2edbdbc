"""Every trainer module; importing this package registers them in ``TRAINER_REGISTRY``."""
from trainers import coop, fedpgp, zsclip  # noqa: F401
