"""tools/mia_shadow.py end to end on a tiny DP-FPL run: the shadow run is the target's config on a new toy
world, the members are exactly the trained items (target and shadows), the report is written; bad input is
one line."""
from __future__ import annotations

import json

import pytest

from federated.run import main as run_main
from tests.fedtv_testing import fast_args
from tools import mia, mia_shadow

ATTACK = ["--epochs", "5", "--batch-size", "8"]


def split_items(run_dir) -> list[dict]:
    with open(run_dir / "split.json") as f:
        clients = json.load(f)["clients"]
    return [{"train": [p for p, _ in c["train"]], "test": [p for p, _ in c["test"]]} for c in clients]


def flat(node: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in node.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    """A 3-client DP-FPL run attacked with one shadow run; the items each model scored, in call order."""
    run_dir = tmp_path_factory.mktemp("mia") / "run"
    run_main(fast_args(run_dir, ["--trainer", "DPFPL", "--rounds", "1"], ["TRAINER.DPFPL.EPSILON", "4"]))
    seen, real = [], mia.client_logits

    def spy(cfg, trainer, items):
        seen.append([d.impath for d in items])
        return real(cfg, trainer, items)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mia, "client_logits", spy)
        assert mia_shadow.main([str(run_dir), "--shadows", "1", "--all-clients", *ATTACK]) == 0
    return run_dir, seen, json.loads((run_dir / "mia_shadow.json").read_text())


def test_members_are_exactly_the_trained_items(attacked):
    run_dir, seen, report = attacked
    target, shadow = split_items(run_dir), split_items(run_dir / "shadows" / "0")
    # target clients first (train = members, then test = non-members, client by client), then the shadow's
    expected = [items for c in target for items in (c["train"], c["test"])]
    expected += [items for c in shadow for items in (c["train"], c["test"])]
    assert seen == expected
    trained = {p for c in target for p in c["train"]}
    assert not trained & {p for c in shadow for p in c["train"] + c["test"]}  # shadow data disjoint
    assert not trained & {p for c in target for p in c["test"]}  # non-members never trained on
    assert report["target_clients"] == [0, 1, 2] and report["member_source"] == "the target client's training items"
    assert report["members"] == report["non_members"] == sum(c["members"] for c in report["classes"])
    assert all(c["members"] == c["non_members"] for c in report["classes"])


def test_shadow_is_the_target_config_on_another_world(attacked):
    run_dir, _, report = attacked
    target = flat(json.loads((run_dir / "results.json").read_text())["config"])
    shadow = flat(json.loads((run_dir / "shadows" / "0" / "results.json").read_text())["config"])
    differ = {k for k in target.keys() | shadow.keys() if target.get(k) != shadow.get(k)}
    seeds = {"SEED", "DATASET.TOYWORLD.SEED"}
    assert seeds | {"OUTPUT_DIR"} <= differ <= seeds | {"OUTPUT_DIR", "DATASET.SPLIT_FILE"}
    assert all(shadow[k] == target[k] + 1000 for k in seeds)
    s = report["shadows"][0]
    assert s["trained_now"] and s["members"] == sum(len(c["train"]) for c in split_items(run_dir / "shadows" / "0"))


def test_report_and_reuse_of_the_finished_shadow(attacked, capsys):
    run_dir, _, report = attacked
    assert 0.0 <= report["mean_class_accuracy"] <= 1.0 and 0.0 <= report["auc"] <= 1.0
    assert report["accuracy_se"] > 0 and report["privacy"]["guarantee"] and report["round"] == 1
    assert report["settings"] == {"epochs": 5, "lr": 0.01, "batch_size": 8, "select": "best", "seed": 0}
    out = run_dir / "client1.json"
    assert mia_shadow.main([str(run_dir), "--shadows", "1", "--client", "1", "--out", str(out), *ATTACK]) == 0
    again = json.loads(out.read_text())
    assert again["target_clients"] == [1] and not again["shadows"][0]["trained_now"]  # reused, not retrained
    assert "mean class accuracy" in capsys.readouterr().out


def test_bad_client_fails_before_any_shadow_trains(attacked, tmp_path, capsys):
    run_dir, _, _ = attacked
    assert mia_shadow.main([str(run_dir), "--client", "7", "--shadow-dir", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.strip() == "error: --client 7: the run has clients 0..2"
    assert not (tmp_path / "s").exists()


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    return err


def test_bad_input_is_one_line(tmp_path, capsys):
    assert mia_shadow.main([str(tmp_path)]) == 2
    assert "results.json is missing" in one_line_error(capsys)
    for name in mia.RUN_FILES:
        (tmp_path / name).write_text("{}")
    # (a real dataset is carved now, tests/test_mia_shadow_carve.py; a mixture's split cannot be a file)
    (tmp_path / "results.json").write_text(json.dumps({"config": {"DATASET": {"NAME": "Caltech101",
                                                                              "PARTITION": "class-chunks"}}}))
    assert mia_shadow.main([str(tmp_path)]) == 2
    assert "class-chunks partition (a dataset mixture) cannot read" in one_line_error(capsys)
    assert mia_shadow.main([str(tmp_path), "--client", "0", "--all-clients"]) == 2
    assert "exclude each other" in one_line_error(capsys)
    (tmp_path / "results.json").write_text(json.dumps({"config": {"DATASET": {"NAME": "ToyWorld"}}}))
    assert mia_shadow.main([str(tmp_path), "--shadow-fraction", "0.5"]) == 2
    assert "a toy-world target's shadows are new worlds" in one_line_error(capsys)
    # a target made by an older version of the code: its config cannot be trained again
    (tmp_path / "results.json").write_text(json.dumps({"config": {"DATASET": {"NAME": "ToyWorld", "GONE": 1}}}))
    assert mia_shadow.main([str(tmp_path), "--shadow-dir", str(tmp_path / "s")]) == 2
    assert "(e.g. DATASET.GONE)" in one_line_error(capsys) and not (tmp_path / "s").exists()
    for bad in (["--shadows", "0"], ["--epochs", "x"], ["--lr", "nan"], ["--select", "last"], ["--carve", "dev"],
                ["--carve", ""], ["--shadow-fraction", "0"], ["--seed", "-1"], ["--carve-seed", "-2"]):
        with pytest.raises(SystemExit) as exit_:
            mia_shadow.main([str(tmp_path), *bad])
        assert exit_.value.code == 2
        one_line_error(capsys)
