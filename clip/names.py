"""Backbone names: the papers' names (``ViT-B/16``), open_clip's names (``ViT-B-16``) and ours (``tiny``).

Our own open_clip model configs live in ``clip/model_configs/*.json``; they are registered with
open_clip (``open_clip.add_model_config``) once, the first time this module is imported.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import open_clip

PACKAGE_DIR = Path(__file__).resolve().parent
MODEL_CONFIG_DIR = PACKAGE_DIR / "model_configs"

#: The CLIP backbones of the CoOp-family papers, spelled as Dassl/CoOp configs write them.
PAPER_BACKBONES: tuple[str, ...] = ("RN50", "RN101", "ViT-B/32", "ViT-B/16", "ViT-L/14")

#: Default weights of backbones that have no open_clip ``openai`` tag: a path relative to this package.
DEFAULT_WEIGHTS: dict[str, str] = {"tiny": "weights/tiny_toyworld.safetensors"}

_registered = False


def register_model_configs() -> None:
    """Register ``clip/model_configs/`` with open_clip (idempotent)."""
    global _registered
    if not _registered:
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True


register_model_configs()


def local_model_names() -> list[str]:
    """Names of the model configs shipped in ``clip/model_configs/`` (e.g. ``["tiny"]``)."""
    return sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))


def _is_plain_clip_config(cfg: dict | None) -> bool:
    """True if open_clip builds this config as a ``CLIP`` (built-in text transformer), as our TextEncoder needs."""
    if not cfg:
        return False
    text_cfg = cfg.get("text_cfg", {})
    return not (cfg.get("custom_text") or "hf_model_name" in text_cfg or "multimodal_cfg" in cfg)


def supported_backbones() -> list[str]:
    """Every accepted canonical name: open_clip's model names whose model is a plain ``CLIP``, plus ours."""
    return [n for n in open_clip.list_models() if _is_plain_clip_config(open_clip.get_model_config(n))]


def _supported_message(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name.replace("/", "-"), choices, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return (
        f"Unknown CLIP backbone {name!r}.{hint} Supported: the papers' names {', '.join(PAPER_BACKBONES)} "
        f"(also 'ViT-L/14@336px'), our toy model(s) {', '.join(local_model_names())}, or any open_clip name "
        f"with a built-in text transformer: {', '.join(choices)}."
    )


def normalize_backbone_name(name: str) -> str:
    """Map a backbone name to open_clip's canonical model name.

    ``"ViT-B/16"`` -> ``"ViT-B-16"``, ``"ViT-L/14@336px"`` -> ``"ViT-L-14-336"``, ``"rn50"`` -> ``"RN50"``,
    ``"tiny"`` -> ``"tiny"``. Raises ``ValueError`` listing the supported names when unknown, or when the
    open_clip model is not a plain ``CLIP`` (e.g. CoCa or Hugging Face text towers).
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(_supported_message(str(name), supported_backbones()))
    raw = name.strip()
    candidate = re.sub(r"@(\d+)px$", r"-\1", raw, flags=re.IGNORECASE).replace("/", "-")
    models = open_clip.list_models()
    lower = {m.lower(): m for m in models}
    canonical = None
    for c in (raw, candidate):
        if c in models:
            canonical = c
            break
        if c.lower() in lower:
            canonical = lower[c.lower()]
            break
    choices = supported_backbones()
    if canonical is None:
        raise ValueError(_supported_message(raw, choices))
    if canonical not in choices:
        raise ValueError(
            f"CLIP backbone {raw!r} ({canonical}) is known to open_clip but is not a plain CLIP with a built-in "
            f"text transformer, which FedTV's prompt learners need. " + _supported_message(raw, choices)
        )
    return canonical


def pretrained_tags(name: str) -> list[str]:
    """The pretrained tags open_clip knows for canonical model ``name`` (e.g. ``["openai", "laion400m_e31", ...]``)."""
    return list(open_clip.list_pretrained_tags_by_model(name))


def is_openai_architecture(name: str) -> bool:
    """True if OpenAI released weights for this architecture (open_clip has an ``openai`` tag for it)."""
    return "openai" in pretrained_tags(name)


def default_weights(name: str) -> str:
    """The weights used when ``weights=""``: a file path for our own models, else the ``openai`` tag.

    Raises ``ValueError`` for a model that has neither.
    """
    if name in DEFAULT_WEIGHTS:
        return str(PACKAGE_DIR / DEFAULT_WEIGHTS[name])
    if is_openai_architecture(name):
        return "openai"
    tags = pretrained_tags(name)
    raise ValueError(
        f"CLIP backbone {name!r} has no default weights. Pass one of open_clip's tags for it "
        f"({', '.join(tags) if tags else 'none known'}), a local checkpoint file, or 'none' for random weights."
    )
