"""The base-to-novel summaries the field reports, and the global model's accuracy next to the personalised
one: by hand, in results.json / metrics.csv / the final table, and the global model of each method."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from federated.results import SUMMARIES, format_table, summaries
from federated.run import main
from tests.fedtv_testing import fast_args


def test_three_summaries_by_hand():
    got = summaries(80.0, 70.0, 60.0)
    assert got["hm"] == pytest.approx(2 * 70 * 60 / 130)  # 64.615
    assert got["hm_local_base_novel"] == pytest.approx(3 / (1 / 80 + 1 / 70 + 1 / 60))  # 69.041
    assert got["mean_local_hm"] == pytest.approx((80 + 2 * 70 * 60 / 130) / 2)  # 72.308
    assert summaries(None, 70.0, 60.0) == {"hm": pytest.approx(64.6153846), "hm_local_base_novel": None,
                                           "mean_local_hm": None}
    assert summaries(50.0, None, 60.0) == {"hm": None, "hm_local_base_novel": None, "mean_local_hm": None}
    assert summaries(0.0, 70.0, 60.0)["hm_local_base_novel"] == 0.0
    assert set(SUMMARIES) == {"hm", "hm_local_base_novel", "mean_local_hm"}


@pytest.fixture(scope="module")
def fedpgp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fedpgp")
    return out, main(fast_args(out, ["--trainer", "FedPGP", "--rounds", "1"]))


def test_results_json_csv_and_table_hold_every_summary(fedpgp_run):
    out, res = fedpgp_run
    final, zs = res["final"], res["zero_shot"]
    for record in (final, zs, res["rounds"][-1]):
        loc, b, n = record["local"], record["base"], record["novel"]
        assert record["hm_local_base_novel"] == pytest.approx(3 / (1 / loc + 1 / b + 1 / n))
        assert record["mean_local_hm"] == pytest.approx((loc + 2 * b * n / (b + n)) / 2)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["final"]["mean_local_hm"] == pytest.approx(final["mean_local_hm"])
    with open(out / "metrics.csv") as f:
        row = list(csv.DictReader(f))[-1]
    for key in ("hm", "hm_local_base_novel", "mean_local_hm", "global_base", "global_novel", "global_hm"):
        assert float(row[key]) == pytest.approx(res["rounds"][-1][key]), key
    table = format_table(res)
    assert "HM(L,B,N)" in table and "(L+HM)/2" in table and "HM(B,N) = HM(Base, Novel)" in table
    assert f"{final['hm_local_base_novel']:6.2f}" in table
    assert "global model (shared tensors alone)" in table


def test_fedpgp_global_model_is_the_global_prompt_alone(fedpgp_run, tmp_path):
    """FedPGP's global accuracy = the personalised model with U V = 0 (context = sigma), measured directly."""
    from dassl.engine import build_trainer
    from federated.cli import build_cfg, parse_args
    from federated.data import build_federated_data
    from federated.server import FederatedServer

    out, res = fedpgp_run
    cfg = build_cfg(parse_args(fast_args(tmp_path, ["--trainer", "FedPGP", "--rounds", "1"])))
    data = build_federated_data(cfg)
    trainer = build_trainer(cfg, classnames=data.classnames)
    server = FederatedServer(cfg, trainer, data)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    personal = {k: torch.zeros_like(v) if k.endswith(".U") else v for k, v in ckpt["personal"][0].items()}
    trainer.load_state({**ckpt["global"], **personal})
    base = server.runtime.accuracy_on("base", data.base_test, data.base_classnames)
    novel = server.runtime.accuracy_on("novel", data.novel_test, data.novel_classnames)
    final = res["final"]
    assert (final["global_base"], final["global_novel"]) == (pytest.approx(base), pytest.approx(novel))
    assert final["global_hm"] == pytest.approx(2 * base * novel / (base + novel))


def test_each_methods_global_model(tmp_path):
    """FedTV: sigma with the global adapter alone; FedOTP: the global prompts alone; PromptFL (one model for
    every client) reports no separate global model."""
    from dassl.engine import build_trainer
    from federated.cli import build_cfg, parse_args
    from federated.data import build_federated_data

    def trainer_of(name):
        cfg = build_cfg(parse_args(fast_args(tmp_path / name, ["--trainer", name])))
        return build_trainer(cfg, classnames=build_federated_data(cfg).classnames)

    fedtv = trainer_of("FedTV")
    x = torch.randn(4, fedtv.model.clip.embed_dim)
    with torch.no_grad():
        torch.nn.init.normal_(fedtv.model.prompt_learner.S, std=1.0)  # a personal term that matters
        personal_ctx = fedtv.model.prompt_learner.context().clone()
        with fedtv.global_model():
            fused, _ = fedtv.model.fuse(x)
            assert torch.equal(fused, fedtv.model.glo_adapter(x))
            assert torch.equal(fedtv.model.prompt_learner.context(), fedtv.model.prompt_learner.sigma)
        assert not torch.equal(fedtv.model.prompt_learner.context(), fedtv.model.prompt_learner.sigma)
        assert torch.equal(fedtv.model.prompt_learner.context(), personal_ctx)
    assert fedtv.has_global_model

    fedotp = trainer_of("FedOTP")
    with torch.no_grad():
        assert fedotp.model.text_features().shape[0] == 2
        with fedotp.global_model():
            feats = fedotp.model.text_features()
            assert feats.shape[0] == 1
            expected = fedotp.model.encode_prompts(
                fedotp.model.prompt_learner.construct_prompts(fedotp.model.prompt_learner.ctx_global[0]))
            torch.testing.assert_close(feats[0], expected)
    assert fedotp.has_global_model and not trainer_of("PromptFL").has_global_model

    folio = trainer_of("PromptFolio")  # THETA 0.4 mixes; the global model is the global context alone
    with torch.no_grad():
        t_global, t_local = folio.model.text_feature_pair()
        assert not torch.allclose(folio.model.text_features(), t_global)
        with folio.global_model():
            torch.testing.assert_close(folio.model.text_features(), t_global)
    assert folio.has_global_model


def test_final_block_names_the_round_the_published_checkpoint_holds(tmp_path):
    """The published code overwrites save.pt whenever the mean Local is >= the best so far (ties: the later
    round) and reports Base / Novel of that checkpoint: final.at_best_local is that round's record."""
    from yacs.config import CfgNode

    from federated.results import ResultsWriter

    writer = ResultsWriter(str(tmp_path), CfgNode({"SEED": 1}), tensorboard=False)
    for r, (loc, base, novel) in enumerate([(50, 40, 30), (70, 60, 50), (60, 65, 55), (70, 62, 52), (65, 70, 60)], 1):
        writer.add_round({"round": r, "clients": [0], "local": float(loc), "base": float(base), "novel": float(novel),
                          **summaries(float(loc), float(base), float(novel))})
    final = writer.results["final"]
    assert final["round"] == 5 and final["best_local"] == 70.0
    best = final["at_best_local"]
    assert (best["round"], best["base"], best["novel"]) == (4, 62.0, 52.0)
    assert best["hm"] == pytest.approx(2 * 62 * 52 / 114)


def test_accuracy_plot_draws_every_curve_and_the_zero_shot_lines(fedpgp_run, monkeypatch):
    """accuracy.png: Local, Base, Novel and both harmonic means per round, each with its zero-shot line."""
    import matplotlib.pyplot as plt

    from utils import plots

    out, res = fedpgp_run
    drawn = {}
    close = plt.close

    def capture(fig):
        drawn.update({ln.get_label(): list(ln.get_ydata()) for ln in fig.axes[0].get_lines()})
        close(fig)

    monkeypatch.setattr(plots.plt, "close", capture)
    assert plots.plot_accuracy(res, str(out / "again.png")) == str(out / "again.png")
    last, zs = res["rounds"][-1], res["zero_shot"]
    for key, label in (("local", "Local"), ("hm", "HM(B,N)"), ("hm_local_base_novel", "HM(L,B,N)")):
        assert drawn[label] == [pytest.approx(last[key])], label  # one round
        assert drawn[f"{label} (zero-shot)"] == [pytest.approx(zs[key])] * 2, label
