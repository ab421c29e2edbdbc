"""Shared helpers of the test-suite: a small, fast federated setting on the toy world."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: 3 clients, 2 rounds of 1 local epoch, 4 shots.
FAST_FLAGS = ["--num-users", "3", "--rounds", "2", "--local-epochs", "1", "--num-shots", "4"]
#: A small toy world (12 classes: 6 base / 6 novel) and quiet progress bars.
FAST_OPTS = [
    "DATASET.TOYWORLD.NUM_CLASSES", "12", "DATASET.TOYWORLD.TRAIN_PER_CLASS", "8",
    "DATASET.TOYWORLD.VAL_PER_CLASS", "0", "DATASET.TOYWORLD.TEST_PER_CLASS", "6",
    "FED.SHOW_PROGRESS", "False", "DATALOADER.TRAIN_X.BATCH_SIZE", "8",
]


def fast_args(tmp_path, flags: list[str] = (), opts: list[str] = (), weights: str = "none") -> list[str]:
    """CLI arguments for a fast run writing to ``tmp_path`` (random CLIP weights unless ``weights``)."""
    return ["--output-dir", str(tmp_path), "--clip-weights", weights, *FAST_FLAGS, *flags, *FAST_OPTS, *opts]


@contextlib.contextmanager
def console_output():
    """Everything written to ``sys.stdout`` / ``sys.stderr`` and to file descriptors 1 and 2 inside the block
    (also by child processes), as a list that holds the text once the block ends."""
    captured: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                yield captured
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sink.seek(0)
            captured.append(sink.read())


def in_process_and_flower(base, flags: list[str], opts: list[str] = ()) -> tuple[dict, dict]:
    """The same fast run in process (``base / "inprocess"``) and on the Flower simulation (``base / "flower"``),
    both with one torch thread, as Ray's actors: the same float32 summation order in both engines."""
    import torch

    from federated.run import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        inproc = main(fast_args(base / "inprocess", flags, opts))
        sim = main(fast_args(base / "flower", [*flags, "--engine", "flower-sim"], opts))
    finally:
        torch.set_num_threads(threads)
    return inproc, sim


def tap_the_wire(monkeypatch) -> list[tuple[str, str, int, str, dict]]:
    """Record every tensor record that crosses the wire of a Flower simulation (its ServerApp runs in this
    process): ``(direction, message type, client id, record name, tensors by name)``, direction ``"down"`` (a
    train or evaluate message the server sends) or ``"up"`` (a node's train or evaluate reply), message type
    ``"train"`` or ``"evaluate"``; filled while the run goes on."""
    from flwr.app import ArrayRecord

    from federated.flower.strategy import FedTVStrategy

    seen: list[tuple[str, str, int, str, dict]] = []

    def record(direction: str, messages, clients) -> None:
        for m, cid in zip(messages, clients, strict=True):
            if not m.has_error():
                seen.extend((direction, m.metadata.message_type, cid, name, dict(rec.to_torch_state_dict()))
                            for name, rec in m.content.items() if isinstance(rec, ArrayRecord))

    def sending(self, clients, message_type, config, _original=FedTVStrategy._messages):
        out = _original(self, clients, message_type, config)
        record("down", out, clients)
        return out

    def receiving(original):
        def step(self, server_round, replies):
            replies = list(replies)
            record("up", replies, [None if m.has_error() else int(m.content["metrics"]["client-id"]) for m in replies])
            return original(self, server_round, replies)
        return step

    monkeypatch.setattr(FedTVStrategy, "_messages", sending)
    monkeypatch.setattr(FedTVStrategy, "aggregate_train", receiving(FedTVStrategy.aggregate_train))
    monkeypatch.setattr(FedTVStrategy, "aggregate_evaluate", receiving(FedTVStrategy.aggregate_evaluate))
    return seen


class ServerDied(RuntimeError):
    """What :func:`server_dies_in_round` raises in place of the ServerApp's aggregation."""


@contextlib.contextmanager
def server_dies_in_round(dying_round: int):
    """Within the block a Flower run's ServerApp dies after the nodes trained round ``dying_round`` (1-based,
    counted across resumes) and before it checkpointed that round: the nodes are a round ahead of the
    checkpoint. The run raises :class:`ServerDied` (Flower's simulation re-raises the ServerApp's exception)."""
    from federated.flower.strategy import FedTVStrategy

    original = FedTVStrategy.aggregate_train

    def dies(self, server_round, replies):
        replies = list(replies)  # the nodes have trained this round and saved their state
        if self.offset + server_round == dying_round:
            raise ServerDied(f"killed before round {dying_round} was checkpointed")
        return original(self, server_round, replies)

    FedTVStrategy.aggregate_train = dies
    try:
        yield
    finally:
        FedTVStrategy.aggregate_train = original
