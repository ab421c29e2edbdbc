"""The GPU check's parts that run anywhere: the script parses, the profile summary, a scaling-only bench."""
import re
import subprocess
import sys

from tests.fedtv_testing import REPO


def test_gpu_check_script_parses_and_names_every_output():
    assert subprocess.run(["bash", "-n", "bench/gpu_check.sh"], cwd=REPO).returncode == 0
    with open(f"{REPO}/bench/gpu_check.sh") as f:
        text = f.read()
    for step in ("cuda_tests", "bench_paper", "bench_paper_fp32", "scaling", "profile"):
        assert f"step {step} " in text
        assert f"{step}" in text.split("set -uo pipefail")[0]  # documented in the header


def test_profile_summary_of_a_few_rounds(tmp_path):
    env = {"FEDTV_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
           "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "bench/profile_round.py", "--trainer", "PromptFL", "--size", "cpu",
                           "--rounds", "2", "--out", str(tmp_path), "--top", "5"],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (tmp_path / "profile_PromptFL.txt").read_text()
    wall = re.search(r"wall ([\d.]+) s, CPU operator self time ([\d.]+) s", text)
    assert wall and float(wall.group(1)) > 0, text[:500]
    assert "aten::" in text  # the operator table


def test_bench_without_trainers_prints_only_the_scaling_table(tmp_path):
    env = {"FEDTV_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "bench/run.py", "--size", "cpu", "--trainers", "--scaling-clients", "2",
                           "--scaling-classes"], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"\| +2 \| +10 \| +[\d.]+ \| +\d+ \|", proc.stdout), proc.stdout
    assert "min speedup" not in proc.stdout and "s/round |" not in proc.stdout.split("scaling")[0]
