"""``python -m tools.check_data``: per-dataset present / missing report with the preparation steps."""
from __future__ import annotations

from fake_datasets import oxford_pets

from tools.check_data import main, real_datasets


def test_check_data_reports_present_and_missing(tmp_path, capsys):
    oxford_pets(str(tmp_path), per_class=2)
    assert main(["--root", str(tmp_path), "OxfordPets"]) == 0
    assert capsys.readouterr().out.startswith("[ok]      OxfordPets")
    assert main(["--root", str(tmp_path), "OxfordPets", "DomainNet"]) == 1
    out = capsys.readouterr().out
    assert "[missing] DomainNet:" in out and "DomainNet/clipart_train.pkl (clipart train split)" in out
    assert "how to get it: follow FedBN's README" in out
    assert main(["--root", str(tmp_path), "NoSuchSet"]) == 2
    names = real_datasets()
    assert "ToyWorld" not in names and len(names) == 19
