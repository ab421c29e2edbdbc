#!/usr/bin/env python
"""FedPGP Tables 2 and 4: leave-one-domain-out on Office-Caltech10 and DomainNet.

For each held-out domain: one client per remaining domain trains on its own domain (64 shots, all
classes, 25 rounds of 2 local epochs); every client is tested on the held-out domain's test split.
Table 2 = the mean over clients per held-out domain (and the average over domains); Table 4 = the
accuracy of each client (source domain) on the held-out domain, with mean +- std over clients.

    python scripts/table2_4_leave_one_domain_out.py --root DATA/ --output-root output/table2 --report
    python scripts/table2_4_leave_one_domain_out.py --datasets office --domains amazon dslr --methods FedPGP
    python scripts/table2_4_leave_one_domain_out.py --toy --report   # toy world: styles as domains
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools.experiments import Axis, Experiment, Point  # noqa: E402
from tools.protocols import DOMAINS, leave_one_domain_out  # noqa: E402

METHODS = ["ZeroshotCLIP", "CoOp", "PromptFL", "PromptProx", "FedOTP", "FedPGP", "FedTV"]


def configure(point: Point, toy: bool) -> None:
    point.flags["--trainer"] = point.values["methods"]
    leave_one_domain_out(point, toy, point.values["datasets"], point.values["domains"])


EXPERIMENT = Experiment(
    table="lodo", title="Tables 2 and 4: leave-one-domain-out accuracy (held-out domain)",
    axes=[Axis("datasets", ["office", "domainnet"], ["toyworld"], "multi-domain datasets",
               choices=list(DOMAINS)),
          Axis("methods", METHODS, ["PromptFL", "FedPGP"], "trainers"),
          Axis("domains", DOMAINS["office"] + DOMAINS["domainnet"], DOMAINS["toyworld"],
               "held-out domains (those of the selected datasets are run)",
               choices=sorted({d for ds in DOMAINS.values() for d in ds})),
          Axis("seeds", ["1"], ["1"], "seeds", free=True)],
    configure=configure, default_output="output/table2_4_lodo", description=__doc__)

if __name__ == "__main__":
    sys.exit(EXPERIMENT.cli())
