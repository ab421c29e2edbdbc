"""A short federated toy-world run with the shipped tiny CLIP, for "does this trainer learn" tests.

The default fast world (12 classes, photos) is nearly solved zero-shot by the pretrained tiny CLIP,
so these runs render the same 12 classes in the "neon" style with pixel noise, two distractor
objects and background clutter (every difficulty knob set here, independent of the
ToyWorld defaults), 3 clients, 4 shots, rounds of 2 local epochs, no base/novel evaluation (speed).
"""
from __future__ import annotations

import os

from tests.fedtv_testing import REPO, fast_args

SHIPPED_WEIGHTS = os.path.join(REPO, "clip", "weights", "tiny_toyworld.safetensors")
# zero-shot Local about 69 % with the shipped weights (PromptProx reaches about 80 % in 3 rounds)
HARD_WORLD = ["DATASET.TOYWORLD.STYLES", "['neon']", "DATASET.TOYWORLD.NOISE", "0.2",
              "DATASET.TOYWORLD.DISTRACTORS", "2", "DATASET.TOYWORLD.CLUTTER", "1.0", "FED.EVAL_BASE_NOVEL", "False"]


def learning_run(tmp_path, trainer: str, rounds: int = 3, opts: list[str] = ()) -> tuple[float, list[float]]:
    """Zero-shot local accuracy and the local accuracy after each round (percent); ``opts`` are extra overrides."""
    from federated.run import main

    results = main(fast_args(tmp_path, ["--trainer", trainer, "--rounds", str(rounds), "--local-epochs", "2"],
                             [*HARD_WORLD, *opts], weights=""))
    return results["zero_shot"]["local"], [r["local"] for r in results["rounds"]]
