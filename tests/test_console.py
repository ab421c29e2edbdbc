"""What a run prints: a header saying what runs, one line per round, the final table and the paths of
its files; per-client detail only in log.txt (and on the console with --verbose); log.txt holds every
console line; no unlabelled Dassl result blocks."""
import os
import re

from dassl.utils import reset_logger
from federated import console
from federated.results import summaries
from federated.run import main
from tests.fedtv_testing import fast_args

ROUND = re.compile(r"^round (\d)/2:  Local +[\d.]+  Base +[\d.]+  Novel +[\d.]+  HM\(B,N\) +[\d.]+  "
                   r"HM\(L,B,N\) +[\d.]+  loss [\d.]+  [\d.]+ s$")


def _run(tmp_path, capsys, *flags):
    capsys.readouterr()
    results = main(fast_args(tmp_path, ["--rounds", "2", *flags]))
    reset_logger()
    return results, capsys.readouterr()


def _log_lines(folder):
    logs = sorted(n for n in os.listdir(folder) if n.startswith("log.txt"))
    with open(os.path.join(folder, logs[-1])) as f:
        return f.read().splitlines()


def test_console_of_a_run(tmp_path, capsys):
    results, cap = _run(tmp_path, capsys)
    lines = cap.out.splitlines()
    head = "\n".join(lines[:4])
    # the header: method, dataset, protocol, clients, shots, rounds, backbone and weights, output folder
    assert lines[0] == "FedTV on ToyWorld: base-to-novel (clients train on the base classes), pathological split"
    assert lines[1] == "3 clients, 4 shots per class, 2 rounds x 1 local epochs"
    assert lines[2] == "CLIP tiny (weights: none)"
    assert lines[3] == f"output: {os.path.relpath(tmp_path)}" or lines[3] == f"output: {tmp_path}", head
    ready = [ln for ln in lines if ln.startswith("ready in ")]
    assert len(ready) == 1 and "6 classes (+ 6 novel test classes), 3 clients" in ready[0] and "cpu (fp32)" in ready[0]
    assert "clients trained together" in ready[0]
    assert sum(ln.startswith("zero-shot CLIP (hand-crafted prompts): Local") for ln in lines) == 1
    rounds = [ln for ln in lines if ln.startswith("round ")]
    assert [ROUND.match(ln).group(1) for ln in rounds] == ["1", "2"], rounds
    assert any(ln.split() == ["round", "|", "Local", "|", "Base", "|", "Novel", "|", "HM(B,N)", "|", "HM(L,B,N)", "|",
                              "(L+HM)/2"] for ln in lines)  # the final table names all three summaries (issue 15)
    assert lines[-1].startswith("results: ") and lines[-1].split(", ")[0].endswith("results.json")
    assert os.path.join(str(tmp_path), "accuracy.png").endswith(lines[-1].split("plot: ")[1].split(",")[0])
    # nothing unlabelled, nothing per client
    assert "=> result" not in cap.out and "* accuracy" not in cap.out
    assert not any(ln.startswith("  client ") or ln.startswith("  round ") for ln in lines)
    # log.txt: every console line, in order, plus the per-client detail and the full config
    log = _log_lines(tmp_path)
    it = iter(log)
    assert all(any(ln == entry for entry in it) for ln in lines if ln.strip()), "a console line is missing in log.txt"
    assert sum(ln.startswith("  client ") for ln in log) == 3 * 2  # 3 clients evaluated in each of 2 rounds
    assert sum(ln.startswith("  round 1 client ") for ln in log) == 3
    assert "config:" in log and "=> result" not in log


def test_verbose_shows_the_per_client_detail(tmp_path, capsys):
    _, cap = _run(tmp_path, capsys, "--verbose")
    lines = cap.out.splitlines()
    assert sum(ln.startswith("  round 2 client ") for ln in lines) == 3
    assert sum(ln.startswith("  client ") for ln in lines) >= 6
    assert any(ln.startswith("config:") for ln in lines)


def test_eval_only_says_what_it_measured(tmp_path, capsys):
    _run(tmp_path / "run", capsys)
    capsys.readouterr()
    record = main(fast_args(tmp_path / "eval", ["--eval-only", "--model-dir", str(tmp_path / "run"),
                                                "--subsample", "new"]))
    reset_logger()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("evaluating FedTV on ToyWorld: the novel classes")
    assert "=> result" not in "\n".join(lines)
    (line,) = [ln for ln in lines if ln.startswith("new classes, model of ")]
    assert "after round 2" in line and f"Novel {record['novel']:6.2f}" in line
    assert "trained one after another" not in "\n".join(lines) and "warning" not in "\n".join(lines)
    assert lines[-1].startswith("results: ") and "eval_new.json" in lines[-1]


def test_round_line_shows_the_metrics_a_record_holds():
    record = {"round": 3, "local": 81.234, "base": None, "novel": float("nan"), "train_loss": 0.5, "seconds": 2.04}
    assert console.round_line(record, 10) == "round  3/10:  Local  81.23  loss 0.500  2.0 s"
    assert console.round_line({"round": 1, "train_loss": None}, 2) == "round 1/2:  (not evaluated)"
    assert console.metrics_text({"local": 1.0, "base": 2.0, "novel": 3.0, "hm": 2.4}) == (
        "Local   1.00  Base   2.00  Novel   3.00  HM(B,N)   2.40")
    # both harmonic means, labelled: HM(B,N) = 2BN/(B+N), HM(L,B,N) = 3/(1/L+1/B+1/N) (FedPGP's Table 1 HM)
    record = {"local": 90.0, "base": 60.0, "novel": 45.0}
    record.update(summaries(record["local"], record["base"], record["novel"]))
    assert console.metrics_text(record) == "Local  90.00  Base  60.00  Novel  45.00  HM(B,N)  51.43  HM(L,B,N)  60.00"

