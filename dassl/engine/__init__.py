from .build import TRAINER_REGISTRY, build_trainer
from .trainer import NonFiniteLossError, SimpleTrainer, TrainerX

__all__ = ["TRAINER_REGISTRY", "NonFiniteLossError", "SimpleTrainer", "TrainerX", "build_trainer"]
