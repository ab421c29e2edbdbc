"""CLIP's text tower run from token embeddings, as prompt learners (CoOp and descendants) need it."""

from __future__ import annotations

import torch
from open_clip.transformer import text_global_pool
from torch import nn


def clip_dtype(clip_model: nn.Module) -> torch.dtype:
    """The dtype the CLIP's text transformer computes in (its weights' dtype)."""
    return clip_model.transformer.get_cast_dtype()


def token_embedding(clip_model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Embed token ids: LongTensor (n, L) -> (n, L, d_text), in the text transformer's dtype."""
    return clip_model.token_embedding(tokens).to(clip_dtype(clip_model))


class TextEncoder(nn.Module):
    """Runs ``clip_model``'s text tower from token embeddings.

    ``forward(prompts (n, L, d_text), tokenized (n, L)) -> (n, embed_dim)``, not normalised, equal to
    ``clip_model.encode_text(tokenized)`` when ``prompts = token_embedding(clip_model, tokenized)``.
    The EOT position is found from ``tokenized`` (argmax of the ids for open_clip's ``argmax`` pooling),
    so learned context vectors can replace the embeddings of placeholder tokens.

    The module shares (does not copy) the CLIP's text transformer, positional embedding, final LayerNorm
    and projection; it adds no parameters of its own.
    """

    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        for attr in ("transformer", "positional_embedding", "ln_final", "token_embedding"):
            if not hasattr(clip_model, attr):
                raise TypeError(f"TextEncoder needs an open_clip CLIP with a built-in text tower (no {attr!r}).")
        self.transformer = clip_model.transformer
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection  # nn.Parameter (d_text, D), nn.Linear, or None
        self.token_embedding = clip_model.token_embedding  # nn.Embedding; embed with self.embed(tokens)
        self.pool_type = getattr(clip_model, "text_pool_type", "argmax")
        self.eos_id = getattr(clip_model, "text_eos_id", None)
        self.register_buffer("attn_mask", getattr(clip_model, "attn_mask", None), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the text transformer computes in."""
        return self.transformer.get_cast_dtype()

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (n, L) -> token embeddings (n, L, d_text) in ``self.dtype``."""
        return self.token_embedding(tokens).to(self.dtype)

    def forward(self, prompts: torch.Tensor, tokenized: torch.Tensor) -> torch.Tensor:
        """Encode prompt embeddings.

        Args:
            prompts: (n, L, d_text) token embeddings (L <= context length).
            tokenized: (n, L) token ids of the same prompts (for the EOT position).

        Returns:
            (n, embed_dim) text features (not normalised), in ``self.dtype``.
        """
        if prompts.dim() != 3 or tokenized.shape != prompts.shape[:2]:
            raise ValueError(
                f"TextEncoder expects prompts (n, L, d) and tokenized (n, L); got {tuple(prompts.shape)} "
                f"and {tuple(tokenized.shape)}."
            )
        length, context_length = prompts.shape[1], self.positional_embedding.shape[0]
        if length > context_length:
            raise ValueError(f"Prompts have {length} tokens; the context length is {context_length}.")
        dtype = self.dtype
        x = prompts.to(dtype) + self.positional_embedding[:length].to(dtype)
        mask = self.attn_mask
        if mask is not None and mask.shape[-1] != length:
            mask = mask[..., :length, :length]
        x = self.transformer(x, attn_mask=mask)  # open_clip handles batch_first internally: (n, L, d) in and out
        x = self.ln_final(x)
        x = text_global_pool(x, tokenized, self.pool_type, eos_token_id=self.eos_id)
        if isinstance(x, tuple):  # older open_clip returns (pooled, tokens)
            x = x[0]
        if self.text_projection is not None:
            if isinstance(self.text_projection, nn.Linear):
                x = self.text_projection(x)
            else:
                x = x @ self.text_projection
        return x
