"""Differential privacy: per-example clipping, the Gaussian mechanism and its accounting (``opacus``).

The unit of privacy is one training example of one client (sample-level DP, as DP-SGD). A DP step on
a client's Poisson-sampled batch (each example drawn independently with probability ``q``, expected
batch size ``B = q n``):

1. per-example gradients ``g_b`` of a parameter group are clipped to L2 norm ``C``:
   ``g_b <- g_b * min(1, C / ||g_b||)`` (:func:`clip_per_example`), the norm taken over the whole group;
2. they are summed and divided by the *expected* batch size ``B`` (not the drawn one, which would
   itself depend on the data): one example moves the result by at most ``C / B``;
3. Gaussian noise of std ``sigma * C / B`` is added (``sigma``: the noise multiplier). When the server
   adds the noise to the average of ``N`` clients' step-2 results ("central" or global DP), one
   example moves that average by at most ``C / (B N)`` and the noise std is ``sigma * C / (B N)``:
   the same multiplier ``sigma``.

Each such step is a Poisson-subsampled Gaussian mechanism with multiplier ``sigma`` and rate ``q``.
:func:`epsilon_spent` composes ``steps`` of them with ``opacus``'s accountant (RDP by default, or
PRV); :func:`noise_multiplier_for` inverts it (the ``sigma`` that spends a target epsilon).
Two mechanisms applied to the same batch in the same step (DP-FPL's global prompt and its low-rank
factors, each clipped to ``C`` separately) release together a Gaussian mechanism of multiplier
``(sigma_1^-2 + sigma_2^-2)^(-1/2)`` (:func:`combined_multiplier`): the joint sensitivity, measured in
each part's noise std, is ``sqrt(sigma_1^-2 + sigma_2^-2)``.
"""
from __future__ import annotations

import math

import torch

ACCOUNTANTS = ("rdp", "prv")


def clip_per_example(grads: list[torch.Tensor], clip_norm: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Clip per-example gradients of one parameter group to L2 norm ``clip_norm``.

    Args:
        grads: tensors ``(B, *shape_k)``: example ``b``'s gradient is ``[g[b] for g in grads]``; its norm
            is taken over all of them together.
        clip_norm: ``C > 0``.

    Returns:
        ``(clipped, norms)``: the clipped tensors (same shapes) and the norms ``(B,)`` before clipping.
    """
    if clip_norm <= 0:
        raise ValueError(f"the clipping norm must be > 0, got {clip_norm}")
    flat = torch.cat([g.reshape(g.shape[0], -1) for g in grads], dim=1)
    norms = flat.norm(dim=1)
    factor = (clip_norm / (norms + 1e-12)).clamp(max=1.0)
    return [g * factor.view(-1, *([1] * (g.dim() - 1))) for g in grads], norms


def clip_tensor(grad: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """``grad * min(1, C / ||grad||)`` for one tensor (the published batch-mean clipping)."""
    norm = grad.norm()
    return grad * min(1.0, clip_norm / (float(norm) + 1e-12))


def gaussian_noise_like(tensor: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``N(0, std^2)`` noise of ``tensor``'s shape, dtype and device (drawn on the CPU from ``generator``)."""
    noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
    return (noise * float(std)).to(tensor.device, tensor.dtype)


def _accountant(name: str):
    from opacus.accountants import create_accountant

    if name not in ACCOUNTANTS:
        raise ValueError(f"the accountant must be one of {ACCOUNTANTS}, got '{name}'")
    return create_accountant(name)


def epsilon_spent(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                  accountant: str = "rdp") -> float:
    """Epsilon of ``steps`` compositions of the Poisson-subsampled Gaussian mechanism (multiplier
    ``noise_multiplier``, rate ``sample_rate``) at ``delta``, by ``opacus``'s accountant; ``inf`` without noise."""
    return epsilon_of_history([(noise_multiplier, sample_rate, steps)], delta, accountant)


def epsilon_of_history(history: list[tuple[float, float, int]], delta: float, accountant: str = "rdp") -> float:
    """Epsilon of the composition of segments ``(noise multiplier, sample rate, steps)`` at ``delta`` (e.g. a
    run resumed with another noise multiplier), by ``opacus``'s accountant; ``inf`` when a segment has no
    noise, 0 without steps."""
    history = [(float(m), float(q), int(n)) for m, q, n in history if int(n) > 0]
    if not history:
        return 0.0
    if any(m <= 0 for m, _, _ in history):
        return math.inf
    acc = _accountant(accountant)
    acc.history = history
    return float(acc.get_epsilon(delta=float(delta)))


def noise_multiplier_for(target_epsilon: float, sample_rate: float, steps: int, delta: float,
                         accountant: str = "rdp") -> float:
    """The smallest noise multiplier (``opacus.accountants.utils.get_noise_multiplier``, tolerance 0.01)
    whose ``steps`` subsampled Gaussian steps spend at most ``target_epsilon`` at ``delta``."""
    import warnings

    from opacus.accountants.utils import get_noise_multiplier

    if target_epsilon <= 0:
        raise ValueError(f"the target epsilon must be > 0, got {target_epsilon}")
    with warnings.catch_warnings():  # "optimal order is the largest alpha": the bound is valid, only loose
        warnings.simplefilter("ignore", UserWarning)
        return float(get_noise_multiplier(target_epsilon=float(target_epsilon), target_delta=float(delta),
                                          sample_rate=float(sample_rate), steps=int(steps),
                                          accountant=accountant))


def combined_multiplier(*multipliers: float) -> float:
    """The multiplier of Gaussian mechanisms released together on the same batch (module docstring)."""
    if any(m <= 0 for m in multipliers):
        return 0.0
    return 1.0 / math.sqrt(sum(m ** -2 for m in multipliers))


def published_noise_multiplier(epsilon: float, rounds: int, delta: float, sample_rate: float = 1.0) -> float:
    """The published DP-FPL formula ``sigma = q sqrt(T ln(1/delta)) / epsilon`` with ``T`` the number of
    rounds (not of noisy steps) and ``q = 1`` (Abadi et al.'s closed-form bound without its constant).
    Used only by ``NOISE_AS_EPSILON`` (the published behaviour); its epsilon is not a guarantee."""
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    return float(sample_rate) * math.sqrt(int(rounds) * math.log(1.0 / float(delta))) / float(epsilon)
