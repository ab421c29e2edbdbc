"""The papers' federated settings as ``federated_main`` flags, for the table scripts (``scripts/``).

Each function fills a :class:`tools.experiments.Point` for the paper (``toy=False``) or for its
toy-world miniature (``toy=True``: 3 clients, 2 rounds of 1 local epoch, few shots). Method
hyper-parameters (learning rate, rank, mu, ...) are not set here: they come from the method's
trainer config ``configs/trainers/<METHOD>/<backbone>.yaml`` (the published defaults), so every
table uses the same per-method settings.

Sources (docs/PUBLISHED_CODE.md): FedPGP ``plot_basetonew_base.sh`` (base-to-novel: 10 clients, all sampled,
25 rounds of 2 local epochs, 16 shots, batch = shots, pathological split of the base classes),
the deleted ``plot_ours_cifar{10,100}.sh`` (100 clients, 10 % per round, 150 rounds of 1 epoch,
Dirichlet 0.3, all images) and ``domain.sh`` (Office: one client per domain, 64 shots, all classes);
FLoRA (arXiv 2404.15182: 10 clients, 50 rounds of 1 local epoch, IID or Dirichlet non-IID).
"""
from __future__ import annotations

from tools.experiments import TOY_DOMAINS, Point

#: Domains of the leave-one-domain-out datasets (``datasets/office.py``, ``datasets/domainnet.py``).
DOMAINS = {
    "office": ["amazon", "caltech", "dslr", "webcam"],
    "domainnet": ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"],
    "pacs": ["art_painting", "cartoon", "photo", "sketch"],
    "officehome": ["Art", "Clipart", "Product", "Real_World"],
    "toyworld": TOY_DOMAINS,
}


def _toy_or(toy: bool, full: dict[str, str], small: dict[str, str]) -> dict[str, str]:
    return {**full, **small} if toy else full


def base2novel(point: Point, toy: bool, shots: int = 16, rounds: int | None = 25, local_epochs: int | None = 2) -> None:
    """FedPGP's base-to-novel protocol: train on the base classes, evaluate Local / Base / Novel / HM.
    ``rounds`` / ``local_epochs`` None: the trainer config's (the method's published schedule)."""
    full = {"--num-users": "10", "--frac": "1", "--num-shots": str(shots), "--train-batch-size": str(shots),
            "--subsample": "base", "--partition": "pathological"}
    if rounds is not None:
        full["--rounds"] = str(rounds)
    if local_epochs is not None:
        full["--local-epochs"] = str(local_epochs)
    point.flags.update(_toy_or(toy, full, {"--num-users": "3", "--rounds": "2", "--local-epochs": "1",
                                           "--num-shots": "4"}))


def all_classes_fewshot(point: Point, toy: bool, shots: int) -> None:
    """FedPGP's few-shot sweep (``plot_few_shot.sh``): all classes, pathological split, batch = shots."""
    point.flags.update(_toy_or(toy, {
        "--num-users": "10", "--frac": "1", "--rounds": "25", "--local-epochs": "2", "--num-shots": str(shots),
        "--train-batch-size": str(shots), "--subsample": "all", "--partition": "pathological",
    }, {"--num-users": "3", "--rounds": "2", "--local-epochs": "1"}))


def leave_one_domain_out(point: Point, toy: bool, dataset: str, domain: str) -> None:
    """One client per training domain, every client tested on the held-out ``domain``'s test split."""
    if domain not in DOMAINS.get(dataset, []):
        point.skip = True
        return
    point.flags.update(_toy_or(toy, {
        "--rounds": "25", "--local-epochs": "2", "--num-shots": "64", "--subsample": "all",
        "--partition": "domain", "--target-domain": domain,
    }, {"--rounds": "2", "--local-epochs": "1", "--num-shots": "4"}))
    if toy:
        point.opts += ["DATASET.TOYWORLD.STYLES", str(TOY_DOMAINS)]


def dirichlet_100_clients(point: Point, toy: bool, dataset: str) -> None:
    """FedPGP Table 5: 100 clients, 10 % per round, 150 rounds of 1 epoch, Dirichlet(0.3), all images.
    CIFAR-100 uses the coarse/fine hierarchical Dirichlet of the published ``noniid-labeldir100``."""
    partition = "hierarchical-dirichlet" if dataset == "cifar100" else "dirichlet"
    point.flags.update(_toy_or(toy, {
        "--num-users": "100", "--frac": "0.1", "--rounds": "150", "--local-epochs": "1", "--num-shots": "0",
        "--subsample": "all", "--partition": partition, "--beta": "0.3",
    }, {"--num-users": "4", "--frac": "0.5", "--rounds": "2", "--partition": "dirichlet"}))
    point.opts += ["TEST.EVAL_FREQ", "1" if toy else "10"]


def flora_setting(point: Point, toy: bool, partition: str, shots: int = 0, beta: float = 0.1) -> None:
    """FLoRA: 10 clients, 50 rounds of 1 local epoch, all classes; ``iid`` or Dirichlet(``beta``) non-IID."""
    if partition not in ("iid", "noniid"):
        raise ValueError(f"partition must be iid or noniid, got {partition}")
    flags = {"--num-users": "10", "--frac": "1", "--rounds": "50", "--local-epochs": "1", "--num-shots": str(shots),
             "--subsample": "all", "--partition": "iid" if partition == "iid" else "dirichlet"}
    if partition == "noniid":
        flags["--beta"] = str(beta)
    point.flags.update(_toy_or(toy, flags, {"--num-users": "3", "--rounds": "2", "--num-shots": "4"}))
    point.opts += ["TEST.EVAL_FREQ", "1"]  # every round (the CIFAR yamls' Table 5 protocol says 10)


def dpfpl_setting(point: Point, toy: bool) -> None:
    """DP-FPL's setting: 10 clients, all sampled, 100 rounds of synchronous FedSGD (1 pass per round), every
    training image, all classes on a pathological split, batch 32."""
    point.flags.update(_toy_or(toy, {
        "--num-users": "10", "--frac": "1", "--rounds": "100", "--local-epochs": "1", "--num-shots": "0",
        "--train-batch-size": "32", "--subsample": "all", "--partition": "pathological",
    }, {"--num-users": "3", "--rounds": "2", "--num-shots": "4", "--train-batch-size": "8"}))
