"""Entropic optimal transport between image patches and prompts (FedOTP / PLOT), batched.

For a cost ``C`` (M x N) between M patch tokens and N prompts, masses ``mu`` (M,) and ``nu`` (N,) and
a regularisation ``eps``, the kernel is ``K = exp(-C / eps)`` and the plan has the form
``T = diag(u) K diag(v)``:

* ``sinkhorn`` (balanced OT, FedOTP "Sinkhorn"): ``T 1 = mu`` and ``T^T 1 = nu``; alternate
  ``u = mu / (K v)`` and ``v = nu / (K^T u)``.
* ``partial_sinkhorn`` (FedOTP's unbalanced "COT"): the patch-side equality is relaxed to
  ``T 1 <= mu`` while ``T^T 1 = nu``; with ``sum(nu) = gamma <= sum(mu)`` the plan moves mass
  ``gamma`` (``TOP_PERCENT``) and may leave the least relevant patches out. The updates are
  ``u = min(mu / (K v), 1)`` and ``v = nu / (K^T u)``: block coordinate ascent on the dual, whose fixed
  point satisfies the KKT conditions of ``min <T, C> - eps H(T)`` under these constraints (``u_i < 1``
  only where the row constraint is active).

Both start from ``v = 1`` and iterate at most ``max_iter`` times (after each, the prompt marginals are
exact). The early stop (``stop``, one decision per call: a mean over every problem of the batch) is

* ``"published"`` (default): the published GLP_OT rule -- the mean absolute change of the scaling
  vector that the published loop watches falls below ``thresh``: ``u`` (patch side, starting from 1)
  for Sinkhorn, ``v`` (prompt side) for COT, both in the linear domain;
* ``"marginal"``: the next iteration would move less than ``thresh`` of mass on the patch side (L1
  distance of the patch marginals, mean over the batch), so the plan satisfies its constraints to
  ``thresh``. The published rule depends on the scale of the scalings, about ``exp(cost / eps)``:
  it may never fire for a small ``eps``, or fire while the marginals are still off.

The iterations run in the log
domain (``log K = -C / eps``), so a small ``eps`` (e.g. 0.01 in FedOTP's few-shot script) cannot
underflow the kernel to zero and produce NaN; they always run in float32 without autograd: the plan is
treated as a constant, as in the published code (the gradient reaches the prompts through the
similarities, ``d<T*, C>/dC = T*`` at the optimum of the entropic problem).
"""
from __future__ import annotations

import torch

OT_METHODS = ("sinkhorn", "cot")
STOP_RULES = ("published", "marginal")


def is_mapped(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is mapped by ``torch.func.vmap`` (batched clients): no host-side checks then;
    the early stop becomes a per-problem freeze, with the same result."""
    return torch._C._functorch.is_batchedtensor(tensor)


def _check(cost: torch.Tensor, mu: torch.Tensor, nu: torch.Tensor, eps: float, max_iter: int, stop: str) -> None:
    if cost.dim() < 2 or mu.shape != cost.shape[:-1] or nu.shape != cost.shape[:-2] + cost.shape[-1:]:
        raise ValueError(f"optimal transport expects cost (..., M, N), mu (..., M), nu (..., N); got "
                         f"{tuple(cost.shape)}, {tuple(mu.shape)}, {tuple(nu.shape)}")
    if not eps > 0:
        raise ValueError(f"the entropic regularisation eps must be > 0, got {eps}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if stop not in STOP_RULES:
        raise ValueError(f"the stopping rule must be one of {', '.join(STOP_RULES)}, got '{stop}'")


@torch.no_grad()
def _scaling(cost: torch.Tensor, mu: torch.Tensor, nu: torch.Tensor, eps: float, thresh: float,
             max_iter: int, partial: bool, stop: str = "published") -> torch.Tensor:
    """The plan ``diag(u) K diag(v)`` ``(..., M, N)`` after the (partial) Sinkhorn iterations."""
    _check(cost, mu, nu, eps, max_iter, stop)
    with torch.autocast(device_type=cost.device.type, enabled=False):
        log_k = -cost.float() / eps  # (..., M, N)
        log_mu, log_nu = mu.float().log(), nu.float().log()
        log_u, log_v = torch.zeros_like(log_mu), torch.zeros_like(log_nu)
        log_kv = torch.logsumexp(log_k + log_v.unsqueeze(-2), dim=-1)  # log (K v), (..., M)
        mapped, done = is_mapped(cost), None
        for _ in range(max_iter):
            new_u = log_mu - log_kv
            if partial:
                new_u = new_u.clamp(max=0.0)
            new_v = log_nu - torch.logsumexp(log_k + new_u.unsqueeze(-1), dim=-2)
            new_kv = torch.logsumexp(log_k + new_v.unsqueeze(-2), dim=-1)
            if stop == "published":  # the watched scaling's mean change (v for COT, u for Sinkhorn)
                watched, updated = (log_v, new_v) if partial else (log_u, new_u)
                change = (updated.exp() - watched.exp()).abs().mean()
            if done is None:
                log_u, log_v, log_kv = new_u, new_v, new_kv
            else:  # a converged problem keeps its plan (what the early stop gives, mapped over clients)
                log_u, log_v, log_kv = (torch.where(done, old, new) for old, new in
                                        ((log_u, new_u), (log_v, new_v), (log_kv, new_kv)))
            if stop == "marginal":
                # Patch marginals now, and after the next u-update (mu, or min(mu, K v) when partial).
                rows = (log_u + log_kv).exp()
                target = torch.minimum(log_mu, log_kv).exp() if partial else log_mu.exp()
                change = (rows - target).abs().sum(-1).mean()
            converged = change < thresh
            done = converged if done is None else done | converged
            if not mapped and bool(done):
                break
        plan = (log_u.unsqueeze(-1) + log_k + log_v.unsqueeze(-2)).exp()
    if not mapped and not torch.isfinite(plan).all():
        raise FloatingPointError(
            "the optimal-transport plan has NaN/inf entries (non-finite similarities?); check the "
            "inputs, or raise EPS"
        )
    return plan


def sinkhorn(cost: torch.Tensor, mu: torch.Tensor, nu: torch.Tensor, eps: float = 0.1,
             thresh: float = 1e-3, max_iter: int = 100, stop: str = "published") -> torch.Tensor:
    """Balanced entropic OT plan ``(..., M, N)`` with ``T 1 = mu`` and ``T^T 1 = nu`` (at convergence)."""
    return _scaling(cost, mu, nu, eps, thresh, max_iter, partial=False, stop=stop)


def partial_sinkhorn(cost: torch.Tensor, mu: torch.Tensor, nu: torch.Tensor, eps: float = 0.1,
                     thresh: float = 1e-3, max_iter: int = 100, stop: str = "published") -> torch.Tensor:
    """Unbalanced ("COT") plan ``(..., M, N)`` with ``T 1 <= mu`` and ``T^T 1 = nu``: total mass ``sum(nu)``."""
    if not is_mapped(nu) and bool((nu.sum(-1) > mu.sum(-1) * (1 + 1e-6)).any()):
        raise ValueError("partial transport needs sum(nu) <= sum(mu) (TOP_PERCENT <= 1)")
    return _scaling(cost, mu, nu, eps, thresh, max_iter, partial=True, stop=stop)


def uniform_plan(cost: torch.Tensor, method: str, top_percent: float = 1.0, eps: float = 0.1,
                 thresh: float = 1e-3, max_iter: int = 100, stop: str = "published") -> torch.Tensor:
    """FedOTP's plan for cost ``(..., M, N)``: uniform mass ``1/M`` on the patches and ``1/N`` (Sinkhorn)
    or ``top_percent/N`` (COT) on the prompts."""
    method = method.lower()
    if method not in OT_METHODS:
        raise ValueError(f"OT must be one of Sinkhorn, COT; got '{method}'")
    m, n = cost.shape[-2:]
    mu = cost.new_full(cost.shape[:-1], 1.0 / m)
    if method == "sinkhorn":
        return sinkhorn(cost, mu, cost.new_full(cost.shape[:-2] + (n,), 1.0 / n), eps, thresh, max_iter, stop)
    if not 0 < top_percent <= 1:
        raise ValueError(f"TOP_PERCENT must be in (0, 1], got {top_percent}")
    nu = cost.new_full(cost.shape[:-2] + (n,), top_percent / n)
    return partial_sinkhorn(cost, mu, nu, eps, thresh, max_iter, stop)
