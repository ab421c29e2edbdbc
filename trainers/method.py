"""The declarative part of a method (a ``FederatedTrainer`` subclass), checked generically.

A method declares, as class attributes (``trainers/base.py`` lists them all):

* ``CFG_NODE`` and ``cfg_defaults()``: its node ``cfg.TRAINER.<CFG_NODE>`` and the node's defaults;
* ``CFG_RULES``: ``{key: rule}`` with a rule being a tuple of allowed values, a :class:`Range`, or a
  function ``(node) -> message | None`` for checks that involve several keys; subclasses add to
  (or replace) their bases' rules. :func:`check_rules` applies them before the model is built;
* ``SHARED``: name patterns (``fnmatch``: ``*`` is any run of characters, dots included) of the
  trainable tensors uploaded and aggregated; every other trainable tensor is personal;
* ``CLIENT_STATE``: name patterns of buffers holding a client's training state (personal, never trained,
  not read by evaluation; e.g. FedMVP's LoRA switch);
* ``SEQUENTIAL``: ``""`` when the engines may train its clients together (batched), otherwise the
  reason its clients must be trained one after another by the trainer's own Dassl loop;
* ``ROUND_PROTOCOL``: ``"fedavg"`` (each client trains local epochs, the server aggregates what it
  uploads) or ``"fedsgd"`` (one synchronised gradient step at a time, the server averaging and noising
  the shared gradients: ``federated/fedsgd.py``; DP-FPL);
* ``NEEDS_ROUND_START_STATE``: True when ``compute_loss`` reads the shared tensors the client downloaded
  at the start of the round (FedProx's anchor): both engines then hand them over in
  :class:`RoundContext` ``round_start``.

What the engine running a client's local training tells the trainer is one :class:`RoundContext`
(``FederatedTrainer.round_context``), set by the engine for the duration of the training: the client,
the 1-based round number the coordinator passed, and (only when declared) the round-start state.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from federated.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """Numbers ``low <= x <= high`` (``None``: unbounded; ``low_open`` / ``high_open``: strict)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: Any) -> bool:
        x = float(value)
        if self.low is not None and (x <= self.low if self.low_open else x < self.low):
            return False
        return not (self.high is not None and (x >= self.high if self.high_open else x > self.high))

    def __str__(self) -> str:
        lo = None if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        hi = None if self.high is None else f"{'<' if self.high_open else '<='} {self.high:g}"
        if lo and hi:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        return lo or hi or "a number"


@dataclass(frozen=True)
class RoundContext:
    """The local training an engine is running (``FederatedTrainer.round_context``).

    ``client``: the client's id; ``round``: the 1-based round number (the coordinator's ``round_idx + 1``);
    both None outside an engine (a trainer used on its own). ``round_start``: the shared tensors the client
    downloaded this round, by name -- each shaped as its parameter, or one client's row of the stacked
    tensors inside the batched engine's ``vmap`` -- filled only for a method declaring
    ``NEEDS_ROUND_START_STATE`` (empty otherwise).
    """

    client: int | None = None
    round: int | None = None
    round_start: Mapping[str, Any] = field(default_factory=dict)

    def where(self) -> dict[str, int]:
        """``{"client": id, "round": r}`` (the known ones): where a non-finite loss happened."""
        return {k: v for k, v in (("client", self.client), ("round", self.round)) if v is not None}


Rule = tuple | Range | Callable[[Any], "str | None"]


def rule_error(node_name: str, key: str, rule: Rule, node) -> str | None:
    """The message of ``rule`` broken by ``node`` (the trainer's config node), or None."""
    if callable(rule) and not isinstance(rule, Range):
        return rule(node)
    value = node[key]
    if isinstance(rule, Range):
        try:
            ok = value in rule
        except (TypeError, ValueError):
            ok = False
        return None if ok else f"{node_name}.{key} must be {rule}, got {value}"
    return None if value in rule else f"{node_name}.{key} must be one of {tuple(rule)}, got '{value}'"


def collected_rules(cls: type) -> dict[str, Rule]:
    """``CFG_RULES`` of ``cls`` and its bases (a subclass's rule for a key replaces its base's)."""
    rules: dict[str, Rule] = {}
    for klass in reversed(cls.__mro__):
        rules.update(klass.__dict__.get("CFG_RULES", {}))
    return rules


def check_rules(cls: type, cfg) -> None:
    """Raise :class:`ConfigError` for the first value of ``cfg.TRAINER.<cls.CFG_NODE>`` that breaks a rule."""
    if not cls.CFG_NODE or cls.CFG_NODE not in cfg.TRAINER:
        return
    node = cfg.TRAINER[cls.CFG_NODE]
    for key, rule in collected_rules(cls).items():
        message = rule_error(f"TRAINER.{cls.CFG_NODE}", key, rule, node)
        if message:
            raise ConfigError(message)


def shared_names(patterns: tuple[str, ...], names) -> list[str]:
    """The ``names`` (in order) matched by any of ``patterns``."""
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def unmatched_patterns(patterns: tuple[str, ...], names) -> list[str]:
    """The ``patterns`` that match none of ``names`` (a typo, or a part switched off by the config)."""
    names = list(names)
    return [p for p in patterns if not fnmatch.filter(names, p)]
