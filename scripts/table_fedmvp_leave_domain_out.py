#!/usr/bin/env python
"""FedMVP's multi-source -> single-target domain generalisation: leave one domain out on PACS, OfficeHome
and DomainNet.

For each held-out domain: one client per remaining (source) domain, all classes, 8 shots per class,
rounds of one local epoch (each method's own number of rounds and hyper-parameters from
``configs/trainers/<METHOD>/<backbone>.yaml``; FedMVP: 100 rounds); every client is tested on the held-out
domain's test split (``--partition domain --target-domain NAME``). FedMVP's description sentences use the
held-out domain's prefix ("a sketch of a ..."; docs/REPRODUCING.md "FedMVP"), its class attributes are read
from ``<root>/attributes/{pacs,officehome,domainnet}.json`` (docs/DATASETS.md). Not covered: FedMVP's
single-source -> multi-target setting.

    python scripts/table_fedmvp_leave_domain_out.py --root DATA/ --report
    python scripts/table_fedmvp_leave_domain_out.py --toy --report   # toy world: styles as domains
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools.experiments import TOY_DOMAINS, Axis, Experiment, Point  # noqa: E402
from tools.protocols import DOMAINS  # noqa: E402

DATASETS = ["pacs", "officehome", "domainnet"]
METHODS = ["ZeroshotCLIP", "PromptFL", "FedTPG", "FedMVP"]


def configure(point: Point, toy: bool) -> None:
    dataset, domain = point.values["datasets"], point.values["domains"]
    if domain not in DOMAINS.get(dataset, []):
        point.skip = True
        return
    point.flags.update({"--trainer": point.values["methods"], "--partition": "domain", "--target-domain": domain,
                        "--subsample": "all", "--num-shots": "8", "--local-epochs": "1"})
    if toy:
        point.flags.update({"--rounds": "2", "--num-shots": "4"})
        point.opts += ["DATASET.TOYWORLD.STYLES", str(TOY_DOMAINS)]


EXPERIMENT = Experiment(
    table="lodo", title="FedMVP: leave-one-domain-out accuracy on the held-out domain",
    axes=[Axis("datasets", DATASETS, ["toyworld"], "multi-domain datasets", choices=DATASETS + ["toyworld"]),
          Axis("methods", METHODS, ["ZeroshotCLIP", "FedMVP"], "trainers"),
          Axis("domains", sorted({d for ds in DATASETS for d in DOMAINS[ds]}), DOMAINS["toyworld"],
               "held-out domains (those of the selected datasets are run)",
               choices=sorted({d for ds in DOMAINS.values() for d in ds})),
          Axis("seeds", ["1"], ["1"], "seeds", free=True)],
    configure=configure, default_output="output/table_fedmvp_lodo", description=__doc__)

if __name__ == "__main__":
    sys.exit(EXPERIMENT.cli())
