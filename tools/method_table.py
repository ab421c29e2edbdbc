"""Every registered trainer's shared and personal tensors, from its declaration: the golden table
(``tests/golden/method_tensors.json``) and the README's method table.

Each trainer is built with its default config (``--trainer NAME``: the tiny backbone, random
weights, six of the toy world's class names); its trainable tensors are split by its declared
``SHARED`` name patterns. ``python -m tools.method_table`` prints the README table; ``--json`` the
golden table. Counts are those of the tiny backbone.
"""
from __future__ import annotations

import argparse
import json
import re
import sys

#: The README's method table sits between these two lines.
README_BEGIN = "<!-- method table: python -m tools.method_table -->"
README_END = "<!-- end of method table -->"
NUM_CLASSES = 6


def build_default_trainer(name: str, opts: list[str] = ()):
    """Trainer ``name`` in its default config (plus ``opts``: ``KEY VALUE`` overrides)."""
    from dassl.engine import build_trainer
    from datasets.toyworld import all_classnames
    from federated.cli import build_cfg, parse_args

    cfg = build_cfg(parse_args(["--trainer", name, "--clip-weights", "none", "--output-dir", "",
                                "FED.SHOW_PROGRESS", "False", *opts]))
    return build_trainer(cfg, classnames=all_classnames()[:NUM_CLASSES])


def trainer_tensors(name: str) -> dict:
    """``{"shared": [...], "personal": [...], "shared_values": n, "personal_values": n}`` of trainer
    ``name`` in its default config."""
    trainer = build_default_trainer(name)
    params = trainer.trainable_parameters()
    shared, personal = trainer.shared_keys(), trainer.personal_keys()
    return {"shared": shared, "personal": personal,
            "shared_values": sum(params[k].numel() for k in shared),
            "personal_values": sum(params[k].numel() for k in personal if k in params)}


def golden_table() -> dict[str, dict]:
    """Trainer name -> :func:`trainer_tensors`, for every registered trainer."""
    import trainers  # noqa: F401  (registers the trainers)
    from dassl.engine import TRAINER_REGISTRY

    return {name: trainer_tensors(name) for name in TRAINER_REGISTRY.registered_names()}


def name_patterns(names: list[str]) -> list[str]:
    """Tensor names with their layer numbers folded into ``*`` (``a.0.b``, ``a.1.b`` -> ``a.*.b``), in order."""
    out: list[str] = []
    for name in names:
        folded = re.sub(r"\.\d+(?=\.|$)", ".*", name)
        if folded not in out:
            out.append(folded)
    return out


def short_patterns(names: list[str]) -> list[str]:
    """Names of three or more parts shortened to ``first.*.last`` (``loc_adapter.layer.0.weight`` ->
    ``loc_adapter.*.weight``), in order: what the README shows of personal tensors."""
    out: list[str] = []
    for name in names:
        parts = name.split(".")
        short = f"{parts[0]}.*.{parts[-1]}" if len(parts) >= 3 else name
        if short not in out:
            out.append(short)
    return out


def readme_table(golden: dict[str, dict]) -> str:
    """The README's method table (markdown) from the golden table."""
    from dassl.engine import TRAINER_REGISTRY

    def cell(patterns: list[str], names: list[str], values: int) -> str:
        if not names:
            return "-"
        return ", ".join(f"`{p}`" for p in patterns) + f" ({len(names)} tensors, {values:,} values)"

    lines = [README_BEGIN,
             "| trainer | shared: declared patterns (uploaded, aggregated) | personal (never leave the client) | "
             "clients batched | what it is |",
             "|---|---|---|---|---|"]
    for name, row in golden.items():
        cls = TRAINER_REGISTRY.get(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        lines.append(f"| `{name}` | {cell(list(cls.SHARED), row['shared'], row['shared_values'])} | "
                     f"{cell(short_patterns(row['personal']), row['personal'], row['personal_values'])} | "
                     f"{'no: ' + cls.SEQUENTIAL if cls.SEQUENTIAL else 'yes'} | {doc} |")
    lines.append(README_END)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print the golden table (JSON) instead of the README table")
    args = p.parse_args(argv)
    golden = golden_table()
    print(json.dumps(golden, indent=1) if args.json else readme_table(golden))
    return 0


if __name__ == "__main__":
    sys.exit(main())
