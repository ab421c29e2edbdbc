"""The protocol names a command line accepts, importable without torch (the command line checks them
before it builds anything): base-to-novel subsamples and partition spellings."""
from __future__ import annotations

SUBSAMPLE_CHOICES = ("all", "base", "new")

# accepted spelling -> canonical name (canonical names map to themselves)
PARTITIONS: dict[str, str] = {
    "pathological": "pathological",
    "noniid-pathological": "pathological",
    "pat": "pathological",
    "dirichlet": "dirichlet",
    "noniid-labeldir": "dirichlet",
    "dir": "dirichlet",
    "iid": "iid",
    "homo": "iid",
    "hierarchical-dirichlet": "hierarchical-dirichlet",
    "noniid-labeldir100": "hierarchical-dirichlet",
    "domain": "domain",
    "class-chunks": "class-chunks",
    "fedtpg": "class-chunks",
}


def canonical_partition(name: str) -> str:
    """Canonical partition name for ``name`` (case-insensitive, ``_`` read as ``-``).

    Raises:
        ValueError: ``name`` is not a known partition; the message lists the valid names.
    """
    key = str(name).strip().lower().replace("_", "-")
    if key not in PARTITIONS:
        valid = ", ".join(f"{alias} (= {canon})" if alias != canon else alias for alias, canon in PARTITIONS.items())
        raise ValueError(f"unknown partition '{name}'; valid names: {valid}")
    return PARTITIONS[key]
