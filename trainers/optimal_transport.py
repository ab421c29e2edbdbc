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

The iterations run in the linear domain when ``|C / eps| < 80`` (``K`` and the scalings fit in
float32: FedOTP's default ``eps`` 0.1 with costs in [0, 2]), else in the log domain
(``log K = -C / eps``), so a small ``eps`` (e.g. 0.01 in FedOTP's few-shot script) cannot underflow
the kernel to zero and produce NaN; both give the same plan to float32 rounding, and the linear one
takes a tenth of the time on a CPU (one multiply per kernel entry and iteration instead of an
exponential). Under ``vmap`` (batched clients) the log domain is used. They always run in float32
without autograd: the plan is treated as a constant, as in the published code (the gradient reaches the
prompts through the similarities, ``d<T*, C>/dC = T*`` at the optimum of the entropic problem).
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


#: Largest |C / eps| for which the iterations run in the linear domain (float32 holds exp(+-80)).
LINEAR_LIMIT = 80.0


class _Domain:
    """The Sinkhorn operations in the log domain (``x`` = log of a scaling) or, when the kernel cannot
    underflow, in the linear domain, where an iteration multiplies instead of exponentiating every
    entry of the kernel (about 10x faster on a CPU); the plans agree to float32 rounding."""

    def __init__(self, log_k: torch.Tensor, linear: bool):
        self.linear = linear
        # linear: K^T (..., N, M), contiguous, so both products run along contiguous patch rows
        self.k = log_k.exp().transpose(-1, -2).contiguous() if linear else log_k

    def scaling(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.linear else x.exp()

    def from_linear(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.linear else x.log()

    def div(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a / b if self.linear else a - b

    def one(self) -> float:
        return 1.0 if self.linear else 0.0

    def k_v(self, v: torch.Tensor) -> torch.Tensor:
        """``K v`` over the prompts, ``(..., M)``."""
        if self.linear:
            return (self.k * v.unsqueeze(-1)).sum(-2)
        return torch.logsumexp(self.k + v.unsqueeze(-2), dim=-1)

    def kt_u(self, u: torch.Tensor) -> torch.Tensor:
        """``K^T u`` over the patches, ``(..., N)``."""
        if self.linear:
            return (self.k * u.unsqueeze(-2)).sum(-1)
        return torch.logsumexp(self.k + u.unsqueeze(-1), dim=-2)

    def plan(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.linear:
            return (u.unsqueeze(-2) * self.k * v.unsqueeze(-1)).transpose(-1, -2)
        return (u.unsqueeze(-1) + self.k + v.unsqueeze(-2)).exp()


@torch.no_grad()
def _scaling(cost: torch.Tensor, mu: torch.Tensor, nu: torch.Tensor, eps: float, thresh: float,
             max_iter: int, partial: bool, stop: str = "published") -> torch.Tensor:
    """The plan ``diag(u) K diag(v)`` ``(..., M, N)`` after the (partial) Sinkhorn iterations."""
    _check(cost, mu, nu, eps, max_iter, stop)
    with torch.autocast(device_type=cost.device.type, enabled=False):
        log_k = (-cost.float() / eps).contiguous()  # (..., M, N); costs often arrive as a permuted view
        mapped, done = is_mapped(cost), None
        # linear when K = exp(-C/eps) and its scalings stay within float32 (not under vmap: no host check)
        d = _Domain(log_k, linear=not mapped and bool(log_k.abs().max() < LINEAR_LIMIT))
        mu_, nu_ = d.from_linear(mu.float()), d.from_linear(nu.float())
        u, v = torch.full_like(mu_, d.one()), torch.full_like(nu_, d.one())
        kv = d.k_v(v)  # K v, (..., M)
        for _ in range(max_iter):
            new_u = d.div(mu_, kv)
            if partial:
                new_u = new_u.clamp(max=d.one())
            new_v = d.div(nu_, d.kt_u(new_u))
            new_kv = d.k_v(new_v)
            if stop == "published":  # the watched scaling's mean change (v for COT, u for Sinkhorn)
                watched, updated = (v, new_v) if partial else (u, new_u)
                change = (d.scaling(updated) - d.scaling(watched)).abs().mean()
            if done is None or not mapped:  # unmapped: one decision for the batch, taken below
                u, v, kv = new_u, new_v, new_kv
            else:  # a converged problem keeps its plan (what the early stop gives, mapped over clients)
                u, v, kv = (torch.where(done, old, new) for old, new in ((u, new_u), (v, new_v), (kv, new_kv)))
            if stop == "marginal":
                # Patch marginals now, and after the next u-update (mu, or min(mu, K v) when partial).
                rows = d.scaling(u) * d.scaling(kv)
                target = torch.minimum(d.scaling(mu_), d.scaling(kv)) if partial else d.scaling(mu_)
                change = (rows - target).abs().sum(-1).mean()
            converged = change < thresh
            done = converged if done is None else done | converged
            if not mapped and bool(done):
                break
        plan = d.plan(u, v)
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
