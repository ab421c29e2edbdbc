"""FedTV's command line: ``python federated_main.py --help``. The code is ``federated/cli.py`` (parser,
config) and ``federated/run.py`` (running); nothing imports this script."""
import sys

from federated.run import cli

if __name__ == "__main__":
    sys.exit(cli())
