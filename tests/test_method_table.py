"""The golden table of every trainer's shared and personal tensors, its declared sharing patterns, and
the README's method table generated from it (``tools/method_table.py``)."""
from __future__ import annotations

import json
import os

import pytest

from dassl.engine import TRAINER_REGISTRY
from tools.method_table import README_BEGIN, README_END, build_default_trainer, golden_table, readme_table
from trainers.method import shared_names, unmatched_patterns

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(REPO, "tests", "golden", "method_tensors.json")

#: Configs that switch on the parts a default config leaves out, so every declared pattern is exercised.
VARIANTS = {"FLoRA": ["TRAINER.FLORA.VISION_TARGETS", "['out']"],
            "FedFFT": ["TRAINER.FEDFFT.TOWERS", "['text', 'vision']"]}


@pytest.fixture(scope="module")
def golden() -> dict:
    return golden_table()


def test_golden_table_is_the_code(golden):
    with open(GOLDEN) as f:
        assert golden == json.load(f), "regenerate with: python -m tools.method_table --json > " + GOLDEN


def test_every_trainer_is_in_the_table_and_shared_and_personal_are_disjoint(golden):
    assert sorted(golden) == TRAINER_REGISTRY.registered_names()
    for name, row in golden.items():
        assert not set(row["shared"]) & set(row["personal"]), name


@pytest.mark.parametrize("name", TRAINER_REGISTRY.registered_names())
def test_every_shared_pattern_matches_a_trainable_tensor(name):
    cls = TRAINER_REGISTRY.get(name)
    names = list(build_default_trainer(name).trainable_parameters())
    if name in VARIANTS:
        names += list(build_default_trainer(name, VARIANTS[name]).trainable_parameters())
    assert unmatched_patterns(cls.SHARED, names) == [], f"{name}.SHARED has a pattern matching no trainable tensor"


def test_a_typo_in_a_shared_pattern_is_caught():
    names = ["prompt_learner.sigma", "prompt_learner.U", "glo_adapter.layer.0.weight"]
    assert unmatched_patterns(("prompt_learner.sigma", "glo_adaptor.*"), names) == ["glo_adaptor.*"]
    assert shared_names(("prompt_learner.sigma", "glo_adapter.*"), names) == ["prompt_learner.sigma",
                                                                             "glo_adapter.layer.0.weight"]
    # a pattern is the whole name: "prompt_learner.ctx" does not also share "prompt_learner.ctx_local"
    assert shared_names(("prompt_learner.ctx",), ["prompt_learner.ctx", "prompt_learner.ctx_local"]) == \
        ["prompt_learner.ctx"]


def test_readme_method_table_is_generated(golden):
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    start, end = text.index(README_BEGIN), text.index(README_END) + len(README_END)
    assert text[start:end] == readme_table(golden), "regenerate with: python -m tools.method_table"
