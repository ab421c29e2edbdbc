"""Report, per dataset, whether its files are in place under a data root, what is missing and how to get it.

    python -m tools.check_data --root DATA/            # every registered real dataset
    python -m tools.check_data --root DATA/ OxfordPets PACS

Exit status 0 when every listed dataset is complete, 1 otherwise. The checks are the ones a run
makes when it starts (``RealDataset.missing``), so the messages are the same.
"""
from __future__ import annotations

import argparse
import os
import sys

import datasets  # noqa: F401  (registers the datasets)
from dassl.data.datasets import DATASET_REGISTRY


def real_datasets() -> list[str]:
    """Registered dataset names that read files (``REQUIRES_ROOT``), in registry order."""
    return [n for n in DATASET_REGISTRY.registered_names() if getattr(DATASET_REGISTRY.get(n), "REQUIRES_ROOT", False)]


def report(root: str, names: list[str]) -> tuple[str, bool]:
    """``(text, all_complete)`` for ``names`` under ``root``: one line per dataset (where its files were
    found, or what is missing and how to get it), then a one-line summary."""
    lines, complete = [], []
    for name in names:
        cls = DATASET_REGISTRY.get(name)
        missing = cls.missing(root)
        if missing:
            lines.append(f"[missing] {name}: " + "; ".join(missing))
            lines.append(f"          how to get it: {cls.HOW_TO}")
            continue
        complete.append(name)
        where = cls.location(root)
        outside = os.path.relpath(where, root).startswith("..")
        lines.append(f"[ok]      {name} ({where}{', outside the data root' if outside else ''})")
    state = "" if os.path.isdir(root) else " (the folder does not exist)"
    lines.append(f"{len(complete)} of {len(names)} datasets complete under {root}{state}"
                 + (f"; missing: {', '.join(n for n in names if n not in complete)}" if len(complete) < len(names)
                    else ""))
    return "\n".join(lines), len(complete) == len(names)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="DATA/", help="data root (default DATA/)")
    p.add_argument("names", nargs="*", help="dataset names (default: all real datasets)")
    args = p.parse_args(argv)
    known = real_datasets()
    unknown = [n for n in args.names if n not in known]
    if unknown:
        print(f"unknown dataset(s) {', '.join(unknown)}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    text, ok = report(os.path.abspath(os.path.expanduser(args.root)), args.names or known)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
