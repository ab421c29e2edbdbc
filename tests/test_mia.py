"""tools/mia.py: the attack metrics on hand-computed scores, and the members / non-members of a real run."""
from __future__ import annotations

import json

import pytest

from federated.run import main as run_main
from tests.fedtv_testing import fast_args
from tools import mia


def test_auc_by_hand_with_ties():
    # pairs (in, out): 3>1, 3>2, 3=3 (half), 2>1, 2=2 (half), 2<3 -> (1+1+0.5+1+0.5+0) / 6
    assert mia.roc_auc([3, 2], [1, 2, 3]) == pytest.approx(4 / 6)
    assert mia.roc_auc([5, 6], [1, 2]) == 1.0 and mia.roc_auc([1, 2], [5, 6]) == 0.0
    assert mia.roc_auc([1, 1], [1, 1]) == 0.5


def test_best_balanced_accuracy_by_hand():
    # threshold 3: TPR 1/2, TNR 3/3 -> 0.75; threshold 2: TPR 1, TNR 1/3 -> 0.667
    assert mia.best_balanced_accuracy([3, 2], [1, 2, 2.5]) == pytest.approx(0.75)
    assert mia.best_balanced_accuracy([1, 2], [5, 6]) == 0.5  # never below chance: "no one is a member"


def test_members_are_the_trained_items_and_non_members_held_out(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    run_main(fast_args(run_dir, ["--trainer", "DPFPL", "--rounds", "1"], ["TRAINER.DPFPL.EPSILON", "4"]))
    with open(run_dir / "split.json") as f:
        split = json.load(f)["clients"]
    seen = []
    real = mia._per_item

    def spy(cfg, trainer, items):
        seen.append([d.impath for d in items])
        return real(cfg, trainer, items)

    monkeypatch.setattr(mia, "_per_item", spy)
    assert mia.main([str(run_dir), "--client", "1"]) == 0
    with open(run_dir / "mia.json") as f:
        report = json.load(f)
    members, non_members = seen
    train, test = {p for p, _ in split[1]["train"]}, {p for p, _ in split[1]["test"]}
    assert set(members) <= train and set(non_members) <= test and not train & test
    assert report["members"] == report["non_members"] == min(len(train), len(test)) == len(members)
    for attack in ("loss", "confidence"):
        assert 0.0 <= report["attacks"][attack]["auc"] <= 1.0
        assert 0.5 <= report["attacks"][attack]["best_balanced_accuracy"] <= 1.0
    assert report["privacy"]["guarantee"] and report["client"] == 1
    assert "loss attack AUC" in capsys.readouterr().out
    # every client, pooled; and the same items scored by the untrained model
    monkeypatch.setattr(mia, "_per_item", real)
    assert mia.main([str(run_dir), "--all-clients", "--out", str(tmp_path / "all.json")]) == 0
    pooled = json.loads((tmp_path / "all.json").read_text())
    assert pooled["client"] == "all" and len(pooled["clients"]) == len(split)
    assert pooled["members"] == sum(c["members"] for c in pooled["clients"])
    assert mia.main([str(run_dir), "--client", "1", "--untrained"]) == 0
    untrained = json.loads((run_dir / "mia_untrained.json").read_text())
    assert untrained["round"] == 0 and untrained["members"] == report["members"]
    assert untrained["attacks"] != report["attacks"]  # another model scored the same items


def test_not_a_run_folder_is_one_line(tmp_path, capsys):
    assert mia.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "results.json is missing" in err and "\n" not in err
    with pytest.raises(SystemExit) as exit_:  # a negative seed (numpy refuses it) is one line too
        mia.main([str(tmp_path), "--seed", "-1"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err == "error: argument --seed: -1 must be a non-negative number"
