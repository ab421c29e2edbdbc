"""The published per-step cost, paid in reference mode (``FED.REFERENCE_MODE``) and nowhere else.

The methods compute their losses the fast way only; none of them branches on reference mode.
:func:`apply_reference_costs`, called by ``FederatedTrainer`` right after ``build_model`` when reference
mode is on, swaps in the published way of computing the same values (docs/PUBLISHED_CODE.md):

* every prompt learner of the model (``trainers.prompt_learner.PromptLearner``) encodes dense prompts at
  the full context length (no trimmed padding, no shared prefix): ``set_fast_text(False)``;
* a model whose training step asks for several text-feature sets (``step_text_features``: FedPGP / FedTV's
  ``GlobalPersonalCLIP``) computes them with the published four separate text-tower passes
  (:func:`published_step_text_features`).

Same values, only the cost differs: ``tests/test_speed_reference.py`` pins the loss and gradient of both
ways and the passes each one pays; ``bench/run.py`` measures the time.
"""
from __future__ import annotations

import types

import torch
from torch import nn

from trainers.handcrafted import handcrafted_text_features
from trainers.prompt_learner import PromptLearner


def published_step_text_features(model: nn.Module,
                                 with_global: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(z_i, z_G, z_C)``, each ``(C, D)`` normalised, computed as the published FedPGP / FedTV code does at
    every step: four separate text-tower passes of ``C`` prompts -- ``z_C`` re-encoded (no cache), ``z_G``,
    the personal term alone (``z_UV`` / ``z_BA``, computed and never used) and ``z_i``. ``z_G`` is computed
    whatever ``with_global`` says (the published step always does). ``model``: a ``GlobalPersonalCLIP``."""
    learner = model.prompt_learner
    z_c = handcrafted_text_features(model.clip, learner.classnames, model.template)
    z_g = model.encode_prompts(learner.global_prompts())
    model.encode_prompts(learner.construct_prompts(learner.delta()))  # the published unused pass
    return model.text_features(), z_g, z_c


def apply_reference_costs(model: nn.Module) -> None:
    """Make ``model`` (a trainer's built model) pay the published per-step cost (module docstring)."""
    for module in model.modules():
        if isinstance(module, PromptLearner):
            module.set_fast_text(False)
    if hasattr(model, "step_text_features"):
        model.step_text_features = types.MethodType(published_step_text_features, model)
