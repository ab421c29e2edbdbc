"""FedTV's command line: ``python federated_main.py --help``. The code is ``federated/cli.py``; nothing
imports this script."""
import sys

from federated.cli import cli

if __name__ == "__main__":
    sys.exit(cli())
