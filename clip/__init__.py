"""FedTV's CLIP: model loading over open_clip and the prompt learners' TextEncoder.

Public API::

    load_clip(backbone, weights="", device="cpu", cache_dir=None, *, quick_gelu=None) -> LoadedCLIP
    make_random_clip(backbone="tiny", seed=0) -> LoadedCLIP
    TextEncoder(clip_model)(prompts (n, L, d_text), tokenized (n, L)) -> (n, embed_dim)
    token_embedding(clip_model, tokens (n, L)) -> (n, L, d_text)
    normalize_backbone_name(name) -> str
"""

from .checkpoints import read_checkpoint
from .loading import ClipTokenizer, ClipWeightsUnavailable, LoadedCLIP, load_clip, make_random_clip
from .names import PAPER_BACKBONES, normalize_backbone_name, supported_backbones
from .text_encoder import TextEncoder, clip_dtype, token_embedding

__all__ = [
    "PAPER_BACKBONES",
    "ClipTokenizer",
    "ClipWeightsUnavailable",
    "LoadedCLIP",
    "TextEncoder",
    "clip_dtype",
    "load_clip",
    "make_random_clip",
    "normalize_backbone_name",
    "read_checkpoint",
    "supported_backbones",
    "token_embedding",
]
