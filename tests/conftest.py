"""Test-wide settings: offline hub, deterministic CPU threads, the repository on sys.path."""
import os
import sys
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# small tensor ops on a busy 2-core machine: idle OpenMP threads must not spin
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# image-feature caches of the tests go to a fresh folder, never to the user's cache
os.environ.setdefault("FEDTV_CACHE", tempfile.mkdtemp(prefix="fedtv-test-cache-"))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

torch.set_num_threads(2)


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true",
                     help="also run the tests marked slow (skipped by default: minutes of CPU each group)")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` are skipped unless ``--run-slow`` is given."""
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
