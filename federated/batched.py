"""Clients of a round trained together (``FED.BATCH_CLIENTS``): stacked parameters, one vectorised step.

The clients of a round start from their downloaded states and never interact until aggregation, so
``K`` clients can be trained as ONE optimisation problem on one device:

* every trainable tensor ``(...)`` of the trainer becomes a stacked tensor ``(K, ...)``; client ``k``
  sees row ``k``: :class:`ParameterRows` substitutes the rows for the parameters of the trainer's own
  model and ``torch.func.vmap`` maps the trainer's own ``compute_loss`` (adapters, contrastive /
  orthogonality / proximal terms) over the clients, so every method is used unchanged;
* the text tower, where the time goes, therefore runs ONCE per step over all clients' prompts (e.g.
  ``K`` shared prefixes and ``K x C`` class suffixes for PromptFL, ``2K`` and ``2K x C`` for FedPGP /
  FedTV), and so does every small per-client operation (one kernel for all clients instead of ``K``);
* clients whose batch has the same size in a step are mapped together (usually all of them; a
  client's smaller last batch forms its own group);
* the loss is ``sum_k L_k``: row ``k`` of every stacked tensor only influences ``L_k``, so the gradient
  of the sum with respect to row ``k`` is exactly client ``k``'s gradient;
* the optimiser (:class:`MaskedOptimizer`: SGD with momentum / dampening / Nesterov / weight decay,
  Adam, AdamW, AMSGrad) is elementwise, with per-client momentum initialisation and per-client Adam
  step counts, and it only updates the rows of clients that had a batch in this step (clients have
  different numbers of batches per epoch). An epoch is ``max_k n_k`` steps; client ``k`` takes part in
  the first ``n_k``. The learning rate follows the per-epoch schedule of ``OPTIM``, as a fresh
  per-client scheduler would.

Hence batched and sequential training give the same tensors up to floating-point summation order
(``tests/test_speed_batched.py``).

Requirements (:func:`batching_support` names the one that fails; the server then trains the clients
one after another): a method that does not declare ``SEQUENTIAL`` (``trainers/method.py``), frozen,
cached image features (``FED.FEATURE_CACHE``), a frozen text tower, no fp16 gradient scaling, an
elementwise optimiser (``sgd``, ``adam``, ``adamw``, ``amsgrad``), and a ``compute_loss`` that
``vmap`` can map (no ``.item()`` or data-dependent Python branches; a failure raises
:class:`BatchingUnsupported` with vmap's reason before any state changes, and the server falls back
to sequential training).

Deviation from sequential training: a non-finite loss is detected at the end of the epoch (one
host sync per epoch instead of one per step); the round is aborted either way.
"""
from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn

from dassl.engine.trainer import check_finite_loss
from dassl.optim import build_lr_scheduler, build_optimizer
from federated.errors import ConfigError
from trainers.base import FederatedTrainer, advance_scheduler, local_schedule
from trainers.method import RoundContext

MASKED_OPTIMIZERS = ("sgd", "adam", "adamw", "amsgrad")


class BatchingUnsupported(RuntimeError):
    """The trainer cannot be trained with stacked clients (the message says why)."""


def batching_support(trainer: FederatedTrainer) -> str | None:
    """``None`` when ``trainer``'s clients can be trained together, else the reason why not."""
    cls = type(trainer)
    if cls.SEQUENTIAL:
        return f"{cls.__name__} declares SEQUENTIAL: {cls.SEQUENTIAL}"
    if not trainer.image_features_cacheable:
        return f"{cls.__name__}'s image path is trainable or prompted (its image features are not cacheable)"
    encoder = getattr(trainer.model, "text_encoder", None)
    if isinstance(encoder, nn.Module) and any(p.requires_grad for p in encoder.parameters()):
        return f"{cls.__name__} trains its text tower (each client has its own text encoder)"
    if trainer.device.type == "cuda" and trainer.precision in ("fp16", "amp"):
        return "PREC fp16 uses gradient scaling (use bf16 or fp32)"
    name = str(trainer.cfg.OPTIM.NAME).lower()
    if name not in MASKED_OPTIMIZERS:
        return f"OPTIM.NAME {name} has no masked elementwise version (supported: {', '.join(MASKED_OPTIMIZERS)})"
    if trainer.client_optimizer_state:
        return "FED.CLIENT_OPTIMIZER_STATE (each client's momentum kept between rounds) is kept by the sequential loop"
    if trainer.shared_optimizer:
        return "FED.SHARED_OPTIMIZER (one optimiser carried from client to client) is sequential by nature"
    if trainer.optim_overrides():
        return f"{cls.__name__} gives {', '.join(sorted(trainer.optim_overrides()))} its own OPTIM keys"
    if bool(trainer.cfg.OPTIM.STAGED_LR):
        return "OPTIM.STAGED_LR (per-group learning rates) is not supported"
    if not trainer.trainable_parameters():
        return f"{cls.__name__} has nothing to train"
    return None


def epoch_learning_rates(optim_cfg, epochs: int, round_number: int | None = None) -> list[float]:
    """The learning rate of each local epoch of round ``round_number`` (1-based), as a fresh optimiser +
    scheduler of ``optim_cfg`` gives (``trainers.base.local_schedule``: ``OPTIM.SCHEDULE_OVER_ROUNDS``)."""
    cfg, elapsed = local_schedule(optim_cfg, epochs, round_number)
    optim = build_optimizer([nn.Parameter(torch.zeros(1))], cfg)
    sched = build_lr_scheduler(optim, cfg)
    advance_scheduler(sched, elapsed)
    lrs = []
    for _ in range(epochs):
        lrs.append(float(optim.param_groups[0]["lr"]))
        optim.step()  # keeps the scheduler from warning about the call order
        sched.step()
    return lrs


class MaskedOptimizer:
    """An elementwise optimiser over stacked tensors ``(K, ...)`` that updates only active rows.

    Row ``k`` follows exactly the update of ``torch.optim.SGD`` / ``Adam`` / ``AdamW`` (``OPTIM`` keys
    ``NAME``, ``WEIGHT_DECAY``, ``MOMENTUM``, ``SGD_DAMPNING``, ``SGD_NESTEROV``, ``ADAM_BETA1/2``,
    ``ADAM_EPS``) applied to client ``k`` alone: momentum buffers start at a client's first step and
    Adam's bias correction uses the client's own step count.
    """

    def __init__(self, params: list[torch.Tensor], optim_cfg, num_clients: int):
        self.name = str(optim_cfg.NAME).lower()
        if self.name not in MASKED_OPTIMIZERS:
            raise BatchingUnsupported(f"OPTIM.NAME {self.name}: supported {MASKED_OPTIMIZERS}")
        self.params = list(params)
        self.wd = float(optim_cfg.WEIGHT_DECAY)
        self.momentum = float(optim_cfg.MOMENTUM)
        self.dampening = float(optim_cfg.SGD_DAMPNING)
        self.nesterov = bool(optim_cfg.SGD_NESTEROV)
        self.betas = (float(optim_cfg.ADAM_BETA1), float(optim_cfg.ADAM_BETA2))
        self.eps = float(optim_cfg.get("ADAM_EPS", 1e-8))
        device = self.params[0].device
        self.steps = torch.zeros(num_clients, device=device)  # per-client step count
        self.state: list[dict[str, torch.Tensor]] = [{} for _ in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @staticmethod
    def _rows(vector: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``(K,)`` -> ``(K, 1, ..., 1)`` broadcastable against ``like`` ``(K, ...)``."""
        return vector.view(-1, *([1] * (like.dim() - 1)))

    @torch.no_grad()
    def step(self, active: torch.Tensor, lr: float) -> None:
        """One step for the clients where ``active`` (``(K,)`` bool) is True, learning rate ``lr``."""
        first = active & (self.steps == 0)
        self.steps += active.to(self.steps.dtype)
        for p, state in zip(self.params, self.state, strict=True):
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            mask = self._rows(active, p)
            new = self._sgd(p, grad, state, self._rows(first, p), lr) if self.name == "sgd" else \
                self._adam(p, grad, state, lr)
            p.copy_(torch.where(mask, new, p))
            for key, value in list(state.items()):
                if key.endswith("_new"):
                    state[key[:-4]] = torch.where(mask, value, state[key[:-4]])
                    del state[key]

    def _sgd(self, p: torch.Tensor, grad: torch.Tensor, state: dict, first: torch.Tensor, lr: float) -> torch.Tensor:
        d_p = grad + self.wd * p if self.wd else grad
        if self.momentum:
            buf = state.setdefault("buf", torch.zeros_like(p))
            buf_new = torch.where(first, d_p, buf * self.momentum + (1.0 - self.dampening) * d_p)
            state["buf_new"] = buf_new
            d_p = d_p + self.momentum * buf_new if self.nesterov else buf_new
        return p - lr * d_p

    def _adam(self, p: torch.Tensor, grad: torch.Tensor, state: dict, lr: float) -> torch.Tensor:
        beta1, beta2 = self.betas
        if self.name == "adamw":
            p = p * (1.0 - lr * self.wd)
        elif self.wd:
            grad = grad + self.wd * p
        exp_avg = state.setdefault("exp_avg", torch.zeros_like(p))
        exp_avg_sq = state.setdefault("exp_avg_sq", torch.zeros_like(p))
        state["exp_avg_new"] = exp_avg_new = exp_avg.lerp(grad, 1.0 - beta1)
        state["exp_avg_sq_new"] = second = exp_avg_sq * beta2 + (1.0 - beta2) * grad * grad
        if self.name == "amsgrad":
            max_sq = state.setdefault("max_exp_avg_sq", torch.zeros_like(p))
            state["max_exp_avg_sq_new"] = second = torch.maximum(max_sq, second)
        steps = self._rows(self.steps.clamp(min=1).double(), p)  # bias corrections in float64, as torch's
        step_size = (lr / (1.0 - beta1 ** steps)).to(p.dtype)
        denom = second.sqrt() / (1.0 - beta2 ** steps).sqrt().to(p.dtype) + self.eps
        return p - step_size * exp_avg_new / denom


class ParameterRows:
    """Substitutes tensors for a model's trainable parameters for the duration of a ``with`` block.

    What ``torch.func.functional_call`` does, without walking the whole module tree (the frozen CLIP
    included) at every call: the places ``(module, attribute)`` holding each parameter are found
    once. ``use({name: tensor})`` puts the tensors there (a parameter shared by several modules is
    replaced everywhere) and restores the parameters on exit.
    """

    def __init__(self, model: nn.Module, names: list[str]):
        params = dict(model.named_parameters())
        by_id = {id(params[n]): n for n in names}
        self.slots: dict[str, list[tuple[nn.Module, str, nn.Parameter]]] = {n: [] for n in names}
        for module in model.modules():
            for attr, param in module._parameters.items():
                if param is not None and id(param) in by_id:
                    self.slots[by_id[id(param)]].append((module, attr, param))

    @contextlib.contextmanager
    def use(self, tensors: dict[str, torch.Tensor]):
        try:
            for name, tensor in tensors.items():
                for module, attr, _ in self.slots[name]:
                    module._parameters[attr] = tensor
            yield
        finally:
            for name in tensors:
                for module, attr, param in self.slots[name]:
                    module._parameters[attr] = param


class BatchedClients:
    """Trains the clients of a round together (module docstring). ``trainer`` must pass
    :func:`batching_support`."""

    def __init__(self, trainer: FederatedTrainer):
        reason = batching_support(trainer)
        if reason:
            raise BatchingUnsupported(reason)
        self.trainer = trainer
        self.names = list(trainer.trainable_parameters())
        self.shared = set(trainer.shared_keys())
        chunk = int(trainer.cfg.FED.get("BATCH_CLIENTS_CHUNK", 0))
        if chunk < 0:
            raise ConfigError(f"FED.BATCH_CLIENTS_CHUNK must be >= 0 (0: every client in one pass), got {chunk}")
        self.chunk = chunk or 10**9

    def train(self, starts: list[dict[str, torch.Tensor]], loaders: list, epochs: int,
              contexts: list[RoundContext]) -> list[tuple[dict[str, float], dict[str, torch.Tensor]]]:
        """Train ``K = len(starts)`` clients for ``epochs`` epochs.

        Args:
            starts: client k's downloaded state (every trainable tensor by name, CPU or device).
            loaders: client k's epoch iterables of ``{"feat": (B, *F), "label": (B,)}`` batches.
            epochs: local epochs.
            contexts: client k's client id and 1-based round (its ``round_start`` is filled here from
                ``starts`` when the method declares ``NEEDS_ROUND_START_STATE``).

        Returns, per client: the last epoch's summary (size-weighted means of ``loss``, ``acc`` and the
        method's extra terms, as ``local_train``) and its trained state (CPU copies, every trainable name).
        """
        t = self.trainer
        device, k = t.device, len(starts)
        for n in self.names:
            shapes = sorted({tuple(s[n].shape) for s in starts})
            if len(shapes) > 1:  # e.g. FedPHA's per-client prompt lengths
                raise BatchingUnsupported(f"the clients' {n} differ in shape {shapes}: they cannot be stacked")
        stacked = {n: torch.stack([s[n].to(device, torch.float32) for s in starts]).requires_grad_(True)
                   for n in self.names}
        anchors = {n: torch.stack([s[n].to(device) for s in starts]) for n in self.names
                   if n in self.shared} if t.NEEDS_ROUND_START_STATE else {}
        optim = MaskedOptimizer(list(stacked.values()), t.cfg.OPTIM, k)
        round_number = contexts[0].round if contexts else None
        lrs = epoch_learning_rates(t.cfg.OPTIM, epochs, round_number)
        mapped = self._mapped_loss(ParameterRows(t.model, self.names), round_number)
        summaries: list[dict[str, float]] = [{} for _ in range(k)]
        t.set_model_mode("train")
        t.max_epoch = epochs
        try:
            for epoch in range(epochs):
                t.epoch = epoch
                sums: dict[str, torch.Tensor] = {}
                counts = torch.zeros(k, device=device)
                iterators = [iter(loader) for loader in loaders]
                for _ in range(max((len(loader) for loader in loaders), default=0)):
                    batches = [next(it, None) for it in iterators]
                    active = [j for j in range(k) if batches[j] is not None]
                    if not active:
                        break
                    optim.zero_grad()
                    self._step(mapped, stacked, anchors, batches, active, sums, counts)
                    mask = torch.zeros(k, dtype=torch.bool, device=device)
                    mask[active] = True
                    optim.step(mask, lrs[epoch])
                summaries = self._epoch_summaries(sums, counts, contexts, summaries)
        finally:
            t.round_context = RoundContext()
        dtypes = {n: p.dtype for n, p in t.trainable_parameters().items()}
        states = [{n: stacked[n][j].detach().to("cpu", dtypes[n], copy=True) for n in self.names} for j in range(k)]
        return list(zip(summaries, states, strict=True))

    def _mapped_loss(self, swap: ParameterRows, round_number: int | None):
        """``compute_loss`` mapped over clients: ``(rows, anchors, feats (k, B, *F), labels (k, B))`` ->
        ``(loss (k,), logits (k, B, C), extra {name: (k,)})``; ``anchors`` are the downloaded shared
        tensors (``(k, ...)`` each; empty unless the method declares ``NEEDS_ROUND_START_STATE``), handed
        to ``compute_loss`` as each client's row in ``round_context.round_start`` (FedProx's anchor)."""
        t = self.trainer

        def client_loss(rows: dict, anchors: dict, feats: torch.Tensor, labels: torch.Tensor):
            t.round_context = RoundContext(round=round_number, round_start=anchors)
            with swap.use(rows):
                loss, logits, extra = t.compute_loss(feats, labels)
            return loss.float(), logits, {key: torch.as_tensor(v).float() for key, v in extra.items()}

        return torch.func.vmap(client_loss, randomness="different")

    def _step(self, mapped, stacked: dict, anchors: dict, batches: list, active: list[int],
              sums: dict[str, torch.Tensor], counts: torch.Tensor) -> None:
        """One step of the ``active`` clients: forward and backward of ``sum_k L_k``, by groups of clients
        with the same batch size, at most ``chunk`` clients per pass (each pass's backward frees its
        activations; a client's rows only receive its own gradient, so chunking changes nothing else).
        Adds the batch-size-weighted ``loss`` / ``acc`` / extra terms to ``sums`` (``(K,)`` each)."""
        t = self.trainer
        groups: dict[int, list[int]] = {}
        for j in active:
            groups.setdefault(int(batches[j]["label"].shape[0]), []).append(j)
        passes = [(size, members[i : i + self.chunk]) for size, members in groups.items()
                  for i in range(0, len(members), self.chunk)]
        for size, members in passes:
            everyone = len(members) == len(batches)  # no gather needed
            idx = torch.tensor(members, device=t.device)
            rows = {n: v if everyone else v.index_select(0, idx) for n, v in stacked.items()}
            anchor_rows = {n: v if everyone else v.index_select(0, idx) for n, v in anchors.items()}
            feats = torch.stack([batches[j]["feat"] for j in members]).to(t.device)
            labels = torch.stack([batches[j]["label"] for j in members]).to(t.device)
            with t.autocast(), warnings.catch_warnings():
                # torch's note that an op (e.g. fused attention in a dense text pass) is mapped by a loop
                warnings.filterwarnings("ignore", message="There is a performance drop", category=UserWarning)
                try:
                    loss, logits, extra = mapped(rows, anchor_rows, feats, labels)
                except BatchingUnsupported:
                    raise
                except (RuntimeError, ValueError, TypeError) as err:
                    raise BatchingUnsupported(f"{type(t).__name__}.compute_loss cannot be mapped over clients "
                                              f"with torch.func.vmap: {err}") from err
            loss.sum().backward()
            acc = (logits.argmax(dim=-1) == labels).float().mean(dim=-1) * 100.0
            for key, value in {"loss": loss, "acc": acc, **extra}.items():
                value = value.detach().float().expand(len(members)) * size
                sums[key] = sums.get(key, torch.zeros_like(counts)).index_add(0, idx, value)
            counts.index_add_(0, idx, torch.full((len(members),), float(size), device=t.device))

    @staticmethod
    def _epoch_summaries(sums: dict[str, torch.Tensor], counts: torch.Tensor, contexts: list[RoundContext],
                         previous: list[dict]) -> list[dict[str, float]]:
        """Size-weighted epoch means per client (one host sync); a non-finite loss raises."""
        host = {key: v.tolist() for key, v in sums.items()}
        out = []
        for j, n in enumerate(counts.tolist()):
            if not n:
                out.append(previous[j])
                continue
            summary = {key: v[j] / n for key, v in host.items()}
            check_finite_loss(summary["loss"], contexts[j].where())
            out.append(summary)
        return out
