"""bench/run.py end to end at a reduced CPU size: the table, the scaling rows and the last line."""
import re
import subprocess
import sys

from tests.fedtv_testing import REPO


def test_bench_prints_the_table_and_the_min_speedup(tmp_path):
    env = {"FEDTV_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "bench/run.py", "--size", "cpu", "--trainers", "PromptFL", "--rounds", "3",
                           "--scaling-clients", "3", "--scaling-classes"],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    row = re.search(r"\| PromptFL +\| +([\d.]+) \| +([\d.]+) \| +([\d.]+)x \|", out)
    assert row, out
    ref, fast, ratio = (float(x) for x in row.groups())
    assert abs(ratio - ref / fast) <= 0.05 * ratio + 0.05  # the printed seconds are rounded to 1 ms
    assert ratio > 1  # the fast path is faster
    assert re.search(r"\| +3 \| +10 \| +[\d.]+ \| +\d+ \|", out), out  # the scaling row: 3 clients, 10 classes
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"min speedup vs reference: [\d.]+x", last)
    assert float(last.split(": ")[1][:-1]) == ratio
