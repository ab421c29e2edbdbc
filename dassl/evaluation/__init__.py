"""Evaluators (``cfg.TEST.EVALUATOR``)."""
from .evaluator import EVALUATOR_REGISTRY, Classification, EvaluatorBase, build_evaluator, macro_f1_score

__all__ = ["EVALUATOR_REGISTRY", "Classification", "EvaluatorBase", "build_evaluator", "macro_f1_score"]
