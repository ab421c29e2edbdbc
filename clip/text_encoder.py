"""CLIP's text tower run from token embeddings, as prompt learners (CoOp and descendants) need it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, text_global_pool
from torch import nn


def clip_dtype(clip_model: nn.Module) -> torch.dtype:
    """The dtype the CLIP's text transformer computes in (its weights' dtype)."""
    return clip_model.transformer.get_cast_dtype()


def token_embedding(clip_model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Embed token ids: LongTensor (n, L) -> (n, L, d_text), in the text transformer's dtype."""
    return clip_model.token_embedding(tokens).to(clip_dtype(clip_model))


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention ``(..., Lq, hd)`` over ``(..., Lk, hd)`` keys where ``allowed (Lq, Lk)``.

    Written out (not ``F.scaled_dot_product_attention``) so that ``torch.func.vmap`` maps it natively
    (batched clients); the prompt suffixes are a few tokens, so the fused kernels would gain little.
    """
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
    return weights.to(v.dtype) @ v


def _suffix_attention(qs: torch.Tensor, ks: torch.Tensor, vs: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor,
                      causal: torch.Tensor) -> torch.Tensor:
    """Attention of the class suffixes over their set's prefix (all of it) and their own suffix (causal).

    ``qs, ks, vs``: (G, C, H, S, hd); ``kp, vp``: (G, H, P, hd); ``causal``: (S, S) bool. Returns
    (G, C, H, S, hd). The prefix keys / values are used as they are (the C classes' queries are stacked
    as rows), never copied C times: memory and time stay those of the suffix tokens.
    """
    g, c, h, s, hd = qs.shape
    scale = hd ** -0.5
    rows = qs.permute(0, 2, 1, 3, 4).reshape(g, h, c * s, hd)  # (G, H, C*S, hd)
    to_prefix = (rows @ kp.transpose(-2, -1)).view(g, h, c, s, -1).permute(0, 2, 1, 3, 4)  # (G, C, H, S, P)
    to_suffix = (qs @ ks.transpose(-2, -1)).masked_fill(~causal, float("-inf"))  # (G, C, H, S, S)
    weights = (torch.cat([to_prefix, to_suffix], dim=-1) * scale).softmax(dim=-1).to(vs.dtype)
    w_prefix, w_suffix = weights.split([kp.shape[-2], s], dim=-1)
    from_prefix = (w_prefix.permute(0, 2, 1, 3, 4).reshape(g, h, c * s, -1) @ vp).view(g, h, c, s, hd)
    return from_prefix.permute(0, 2, 1, 3, 4) + w_suffix @ vs


class TextEncoder(nn.Module):
    """Runs ``clip_model``'s text tower from token embeddings.

    ``forward(prompts (n, L, d_text), tokenized (n, L)) -> (n, embed_dim)``, not normalised, equal to
    ``clip_model.encode_text(tokenized)`` when ``prompts = token_embedding(clip_model, tokenized)``.
    The EOT position is found from ``tokenized`` (argmax of the ids for open_clip's ``argmax`` pooling),
    so learned context vectors can replace the embeddings of placeholder tokens.

    ``encode_shared_prefix`` encodes ``G`` context sets x ``C`` classes whose prompts share their first
    ``P`` tokens (SOS + context) within a set: the prefix is computed once per set and each class only
    adds its suffix (class name, '.', EOS), attending to the prefix's keys and values. Exact for a
    causal tower (a prefix position never sees the suffix); ``supports_shared_prefix`` says whether
    this tower qualifies (open_clip's standard residual attention blocks, causal mask, EOS pooling).

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
    def supports_shared_prefix(self) -> bool:
        """Whether ``encode_shared_prefix`` is exact for this tower (see the class docstring). Blocks with
        hooks (e.g. MaPLe's deep prompts, installed per call) need their own ``forward``: not supported."""
        blocks = list(getattr(self.transformer, "resblocks", []))
        return (self.attn_mask is not None and self.pool_type in ("argmax", "eos") and bool(blocks)
                and not getattr(self.transformer, "grad_checkpointing", False)
                and all(type(b) is ResidualAttentionBlock and type(b.attn) is nn.MultiheadAttention
                        and b.attn._qkv_same_embed_dim and not hasattr(b, "ln_1_kv")
                        and not (b._forward_hooks or b._forward_pre_hooks) for b in blocks))

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

    def encode_shared_prefix(self, prefix: torch.Tensor, suffix: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
        """Encode ``G x C`` prompts ``[prefix_g ; suffix_c]`` computing each prefix once.

        Args:
            prefix: (G, P, d_text) embeddings of the shared first tokens (SOS + context) of each set.
            suffix: (C, S, d_text) embeddings of each class's remaining tokens (name, '.', EOS, ...).
            eos: (C,) position of class c's EOS token within its suffix.

        Returns:
            (G, C, embed_dim) text features (not normalised), in ``self.dtype``; equal to ``forward`` on
            the concatenated prompts (``supports_shared_prefix`` must hold).
        """
        (g, p, d), (c, s, _) = prefix.shape, suffix.shape
        context_length = self.positional_embedding.shape[0]
        if p + s > context_length:
            raise ValueError(f"Prompts have {p + s} tokens; the context length is {context_length}.")
        dtype = self.dtype
        pos = self.positional_embedding.to(dtype)
        xp = prefix.to(dtype) + pos[:p]  # (G, P, d)
        xs = (suffix.to(dtype) + pos[p : p + s]).unsqueeze(0).expand(g, c, s, d)  # (G, C, S, d)
        causal_prefix = torch.ones(p, p, dtype=torch.bool, device=xp.device).tril()
        causal_suffix = torch.ones(s, s, dtype=torch.bool, device=xp.device).tril()
        for block in self.transformer.resblocks:
            attn = block.attn
            heads = attn.num_heads
            qp, kp, vp = F.linear(block.ln_1(xp), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
            qs, ks, vs = F.linear(block.ln_1(xs), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
            qp, kp, vp = (t.unflatten(-1, (heads, -1)).transpose(-3, -2) for t in (qp, kp, vp))  # (G, H, P, hd)
            qs, ks, vs = (t.unflatten(-1, (heads, -1)).transpose(-3, -2) for t in (qs, ks, vs))  # (G, C, H, S, hd)
            out_p = _attention(qp, kp, vp, causal_prefix)
            out_s = _suffix_attention(qs, ks, vs, kp, vp, causal_suffix)
            out_p = attn.out_proj(out_p.transpose(-3, -2).flatten(-2))  # (G, P, d)
            out_s = attn.out_proj(out_s.transpose(-3, -2).flatten(-2))  # (G, C, S, d)
            xp = xp + block.ls_1(out_p)
            xp = xp + block.ls_2(block.mlp(block.ln_2(xp)))
            xs = xs + block.ls_1(out_s)
            xs = xs + block.ls_2(block.mlp(block.ln_2(xs)))
        xs = self.ln_final(xs)
        x = xs[:, torch.arange(c, device=xs.device), eos.to(xs.device)]  # (G, C, d)
        if self.text_projection is not None:
            x = self.text_projection(x) if isinstance(self.text_projection, nn.Linear) else x @ self.text_projection
        return x
