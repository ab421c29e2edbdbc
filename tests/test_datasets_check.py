"""``python -m tools.check_data``: per-dataset present / missing report with the preparation steps."""
from __future__ import annotations

import os

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


def test_empty_root_says_where_data_was_found_and_sums_up(tmp_path, capsys):
    """A missing root: nothing claims to be under it; data found elsewhere (Debian's Fashion-MNIST) says
    where; the last line counts the complete datasets."""
    from datasets.fashion_mnist import find_files

    root = tmp_path / "EMPTY"
    assert main(["--root", str(root)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert not any(ln.startswith("[ok]") and str(root) in ln for ln in lines)
    system = find_files(str(root))
    complete = 0
    if system:  # the system package is installed
        complete = 1
        folder = os.path.dirname(system["train-images-idx3-ubyte"])
        assert f"[ok]      FashionMNIST ({folder}, outside the data root)" in lines
    assert lines[-1].startswith(f"{complete} of 19 datasets complete under {root} (the folder does not exist); "
                                f"missing: ")
    assert "OxfordPets" in lines[-1]
