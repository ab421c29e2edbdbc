"""FedTV on Flower (``flwr`` 1.41, Message API): the same registered trainers and aggregators as
``federated_main.py``, run through Flower's simulation or a real SuperLink + SuperNodes deployment.

* ``client_app.py``: the ClientApp. Each node is one FedTV client (``client-id`` in its
  ``--node-config``; ``partition-id`` in the simulation). It trains and evaluates through the same
  ``ClientRuntime.train_client`` / ``evaluate_client`` as the in-process loop, sends only the
  trainer's shared tensors, and keeps its personal tensors in ``context.state`` and on its disk.
* ``strategy.py``: ``FedTVStrategy``, a Flower ``Strategy`` that drives the same ``Coordinator`` as
  the in-process loop (sampling, aggregation, server step, evaluation record, results / checkpoint
  files) over Flower messages.
* ``server_app.py``: the ServerApp (reads the run config, runs the strategy).
* ``settings.py``: yacs config from the run config and the node config; the node's identity.
* ``node.py``: the per-process experiment cache and the node's personal-state store.
* ``simulation.py``: ``federated_main.py --engine flower-sim``.

The Flower dependency is optional (``requirements-flower.txt``); nothing else in FedTV imports it.
"""
