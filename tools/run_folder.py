"""The files of a run's output folder that the experiment driver and the report read: the grid's
``manifest.json``, each run's ``run_info.json``, and whether a run finished (``run_state``)."""
from __future__ import annotations

import json
import os

MANIFEST = "manifest.json"
RUN_INFO = "run_info.json"


def expected_rounds(results: dict) -> int:
    """Rounds a run is configured for (1 for a method with nothing to train, as the server does)."""
    params = results.get("params") or {}
    if params.get("total", 1) == 0:
        return 1
    return int(results["config"]["OPTIM"]["ROUND"])


def run_state(output_dir: str) -> str:
    """``finished`` (a final block after all configured rounds), ``partial`` (results or checkpoint of an
    interrupted run) or ``missing``."""
    path = os.path.join(output_dir, "results.json")
    if os.path.isfile(path):
        try:
            with open(path) as f:
                results = json.load(f)
            rounds = results.get("rounds") or []
            if results.get("final") and rounds and rounds[-1]["round"] == expected_rounds(results):
                return "finished"
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return "partial"
    return "partial" if os.path.isfile(os.path.join(output_dir, "checkpoint.pt")) else "missing"
