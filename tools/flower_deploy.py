"""Real Flower deployment of a FedTV run on this machine: a SuperLink and N SuperNodes on 127.0.0.1.

    python tools/flower_deploy.py --work-dir /tmp/fedtv-deploy --num-nodes 3 \\
        --opts "--trainer PromptFL --num-users 3 --rounds 2 --clip-weights none"

Steps: make a CA, a server certificate for 127.0.0.1 and one EC key pair per SuperNode with openssl
(``--insecure`` skips TLS and node authentication; it must be asked for), start
``flower-superlink`` with TLS and ``--enable-supernode-auth``, register every node's public key
(``flwr supernode register``), start the SuperNodes (``--node-config "client-id=k data-root=...
clip-weights=... state-dir=..."``), ``flwr run`` the app (this repository), wait for the run to end,
copy ``results.json``, and stop exactly the processes it started, by PID. Everything is bounded by
``--timeout``. Fault injection for tests: ``--kill-node K --kill-after-round R`` kills node K
(SIGKILL) once R rounds are in ``results.json``; ``--restart-after-round Q`` starts it again once Q
rounds are there (it rejoins with the personal state its previous process left on disk).
``--kill-superlink-after-round R`` kills the SuperLink (and the ServerApp it runs) once R rounds are
in ``results.json``, stops the rest and returns the rounds finished so far.

Resume: ``--resume`` (the same ``--work-dir`` and ``--opts``; ``--rounds`` may grow) continues the
server's checkpoint in ``<work-dir>/output`` with a new SuperLink and new SuperNodes; the nodes keep
their ``<work-dir>/node_state``, which holds their personal tensors under the run's experiment token.
Logs of every process are in ``<work-dir>/logs``.

Exposure: the SuperLink binds ``LOOPBACK`` (127.0.0.1) only. Flower serves the Fleet API (SuperNodes),
the Control API (``flwr run`` / ``ls`` / ``stop``) and the ServerAppIO API on that one port, and node
authentication guards the Fleet API only: whoever reaches the port with the (public) CA certificate
can submit an app, i.e. run code on the SuperLink and on every SuperNode. Across machines, reach it
through an SSH tunnel or a VPN and firewall the port (docs/FLOWER_USAGE.md, "Who can submit code").
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The only address the SuperLink listens on (module docstring: the Control API accepts code from anyone
#: who reaches it).
LOOPBACK = "127.0.0.1"
OFFLINE_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
               "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}


class DeployError(RuntimeError):
    """The deployment failed; the message names the log to read."""


def _run(cmd: list[str], cwd: str, env: dict, timeout: float = 60.0) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise DeployError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def make_credentials(directory: str, num_nodes: int) -> dict:
    """CA, server certificate (SAN 127.0.0.1, localhost) and one P-384 key pair per node (OpenSSH format)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    os.makedirs(directory, exist_ok=True)
    p = {name: os.path.join(directory, name) for name in ("ca.key", "ca.crt", "server.key", "server.csr",
                                                          "server.crt", "san.cnf")}
    with open(p["san.cnf"], "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    env = dict(os.environ)
    _run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=FedTV test CA",
          "-keyout", p["ca.key"], "-out", p["ca.crt"]], directory, env)
    _run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", p["server.key"],
          "-out", p["server.csr"]], directory, env)
    _run(["openssl", "x509", "-req", "-in", p["server.csr"], "-CA", p["ca.crt"], "-CAkey", p["ca.key"],
          "-CAcreateserial", "-days", "2", "-extfile", p["san.cnf"], "-out", p["server.crt"]], directory, env)
    nodes = []
    for k in range(num_nodes):
        key = ec.generate_private_key(ec.SECP384R1())
        private, public = os.path.join(directory, f"node{k}"), os.path.join(directory, f"node{k}.pub")
        with open(private, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                      serialization.NoEncryption()))
        os.chmod(private, 0o600)
        with open(public, "wb") as f:
            f.write(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
        nodes.append((private, public))
    return {"ca": p["ca.crt"], "cert": p["server.crt"], "key": p["server.key"], "nodes": nodes}


class Deployment:
    """The processes of one local deployment; ``stop()`` ends exactly those, by PID."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = os.path.abspath(args.work_dir)
        self.logs = os.path.join(self.work, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.env = {**os.environ, **OFFLINE_ENV, "FLWR_HOME": os.path.join(self.work, "flwr_home"),
                    "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.procs: dict[str, subprocess.Popen] = {}
        self.creds = None if args.insecure else make_credentials(os.path.join(self.work, "certs"), args.num_nodes)
        self.link = f"{LOOPBACK}:{args.port}"

    def _start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(os.path.join(self.logs, f"{name}.log"), "a")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(cmd, cwd=self.work, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def _tls(self, role: str) -> list[str]:
        if self.creds is None:
            return ["--insecure"]
        if role == "link":
            return ["--ssl-ca-certfile", self.creds["ca"], "--ssl-certfile", self.creds["cert"],
                    "--ssl-keyfile", self.creds["key"], "--enable-supernode-auth"]
        return ["--root-certificates", self.creds["ca"]]

    def write_cli_config(self) -> None:
        home = self.env["FLWR_HOME"]
        os.makedirs(home, exist_ok=True)
        lines = ["[superlink]", 'default = "local-deploy"', "", "[superlink.local-deploy]", f'address = "{self.link}"']
        lines += ["insecure = true"] if self.creds is None else [f'root-certificates = "{self.creds["ca"]}"']
        with open(os.path.join(home, "config.toml"), "w") as f:
            f.write("\n".join(lines) + "\n")

    def start_superlink(self) -> None:
        self._start("superlink", ["flower-superlink", "--host", LOOPBACK, "--port", str(self.args.port),
                                  "--disable-runtime-dependency-installation", *self._tls("link")])
        self.write_cli_config()
        deadline = time.time() + 60
        while True:  # ready when the control API answers
            done = subprocess.run(["flwr", "ls", "local-deploy"], cwd=self.work, env=self.env, capture_output=True,
                                  text=True, timeout=60)
            if done.returncode == 0:
                return
            if self.procs["superlink"].poll() is not None or time.time() > deadline:
                raise DeployError(f"the SuperLink did not start: see {self.logs}/superlink.log")
            time.sleep(1)

    def register_nodes(self) -> None:
        if self.creds is None:
            return
        for _, public in self.creds["nodes"]:
            _run(["flwr", "supernode", "register", public, "local-deploy"], self.work, self.env)

    def start_node(self, k: int) -> None:
        a = self.args
        config = [f"client-id={k}", f'state-dir="{os.path.join(self.work, "node_state")}"']
        if a.data_root:
            config.append(f'data-root="{a.data_root}"')
        if a.clip_weights:
            config.append(f'clip-weights="{a.clip_weights}"')
        auth = [] if self.creds is None else ["--auth-supernode-private-key", self.creds["nodes"][k][0]]
        self._start(f"node{k}", ["flower-supernode", "--superlink", self.link, "--port", str(a.port + 10 + k),
                                 "--node-config", " ".join(config), *self._tls("node"), *auth])

    def run_app(self) -> None:
        a = self.args
        run_config = [f'opts="{a.opts}"', f"round-timeout={float(a.round_timeout)}",
                      f"join-timeout={float(a.join_timeout)}", f"rejoin-wait={float(a.rejoin_wait)}",
                      f"min-clients={int(a.min_clients)}"]
        if a.dataset_config:
            run_config.append(f'dataset-config="{a.dataset_config}"')
        if a.trainer_config:
            run_config.append(f'trainer-config="{a.trainer_config}"')
        if a.clip_weights:
            run_config.append(f'clip-weights="{a.clip_weights}"')
        if a.data_root:
            run_config.append(f'data-root="{a.data_root}"')
        self._start("flwr_run", ["flwr", "run", a.app, "local-deploy", "--stream",
                                 "--run-config", " ".join(run_config)])

    def wait(self, results_path: str) -> None:
        a = self.args
        deadline = time.time() + a.timeout
        killed = False
        while self.procs["flwr_run"].poll() is None:
            if a.kill_superlink_after_round is not None and _rounds_done(results_path) >= a.kill_superlink_after_round:
                link = self.procs["superlink"]
                os.killpg(link.pid, signal.SIGKILL)
                link.wait()
                print(f"killed the SuperLink (pid {link.pid}) after round {a.kill_superlink_after_round}", flush=True)
                return
            if time.time() > deadline:
                raise DeployError(f"the run did not finish within {a.timeout}s: see {self.logs}")
            done = _rounds_done(results_path)
            if a.kill_node is not None and not killed and done >= a.kill_after_round:
                proc = self.procs[f"node{a.kill_node}"]
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                killed = True
                print(f"killed node {a.kill_node} (pid {proc.pid}) after round {a.kill_after_round}", flush=True)
            if (killed and a.restart_after_round is not None and done >= a.restart_after_round
                    and self.procs[f"node{a.kill_node}"].poll() is not None):
                self.start_node(a.kill_node)
                print(f"restarted node {a.kill_node}", flush=True)
            time.sleep(0.5)
        if self.procs["flwr_run"].returncode:
            cause = last_error(self.logs)
            raise DeployError(f"flwr run failed ({self.procs['flwr_run'].returncode})" + (f": {cause}" if cause else "")
                              + f" (logs: {self.logs})")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL, each process group this deployment started (and nothing else)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.time() + 10
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(deadline - time.time(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def default_clip_weights(args: argparse.Namespace) -> str:
    """The weights every process loads when ``--clip-weights`` is not given: ``flwr run`` ships the app
    as text files only, so a backbone whose default weights are a file of this repository (the toy
    world's ``tiny``) gets that file's absolute path; other backbones keep their default (a tag)."""
    import shlex

    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from clip.names import DEFAULT_WEIGHTS, PACKAGE_DIR
    from federated.cli import build_cfg, known, parse_args

    argv = shlex.split(args.opts)
    if args.dataset_config:
        argv = ["--dataset-config-file", os.path.join(args.app, args.dataset_config), *argv]
    if args.trainer_config:
        argv = ["--config-file", os.path.join(args.app, args.trainer_config), *argv]
    cfg = build_cfg(parse_args(argv), known(live=False))
    if cfg.MODEL.BACKBONE.WEIGHTS or cfg.MODEL.BACKBONE.NAME not in DEFAULT_WEIGHTS:
        return ""
    return str(PACKAGE_DIR / DEFAULT_WEIGHTS[cfg.MODEL.BACKBONE.NAME])


#: A traceback's last line (``clip.loading.ClipWeightsUnavailable: ...``) or a logged error line.
_ERROR_LINE = re.compile(r"^((?:[\w.]+\.)?[A-Z]\w*(?:Error|Exception|Unavailable|Diverged): |error: |ERROR\b)")


def last_error(logs: str) -> str | None:
    """The last error line the ServerApp or ``flwr run`` logged (what actually went wrong), if any."""
    found = None
    for name in ("superlink.log", "flwr_run.log"):
        try:
            with open(os.path.join(logs, name), errors="replace") as f:
                for line in f:
                    text = line.strip()
                    if _ERROR_LINE.match(text):
                        found = text
        except OSError:
            continue
    return found


def _rounds_done(path: str) -> int:
    try:
        with open(path) as f:
            return len(json.load(f)["rounds"])
    except (OSError, ValueError, KeyError):
        return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", required=True, help="certificates, logs, node state, Flower home, results")
    p.add_argument("--num-nodes", type=int, required=True, help="SuperNodes = clients (must match --num-users)")
    p.add_argument("--opts", default="", help="federated_main.py flags and KEY VALUE overrides (one string)")
    p.add_argument("--dataset-config", default="", help="dataset yaml (default: the toy world)")
    p.add_argument("--trainer-config", default="", help="trainer yaml (default: per trainer and backbone)")
    p.add_argument("--clip-weights", default="",
                   help="CLIP weights on every node (a local file, a tag or none; default: the backbone's default, "
                        "the shipped file's absolute path for tiny)")
    p.add_argument("--data-root", default="", help="data root on every node")
    p.add_argument("--app", default=REPO, help="the Flower app directory (this repository)")
    p.add_argument("--port", type=int, default=9190, help="SuperLink port; SuperNodes use port+10+k")
    p.add_argument("--insecure", action="store_true", help="no TLS and no node authentication (explicit opt-in)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds for the whole run")
    p.add_argument("--round-timeout", type=float, default=120.0, help="seconds to wait for one step's replies")
    p.add_argument("--join-timeout", type=float, default=120.0, help="seconds to wait for every node before round 1")
    p.add_argument("--rejoin-wait", type=float, default=0.0,
                   help="seconds to wait, before a later round, for a sampled client whose node is gone")
    p.add_argument("--min-clients", type=int, default=1, help="fewest training replies that make a round")
    p.add_argument("--kill-node", type=int, default=None, help="fault injection: SIGKILL this node ...")
    p.add_argument("--kill-after-round", type=int, default=1, help="... once this many rounds are finished")
    p.add_argument("--restart-after-round", type=int, default=None,
                   help="restart the killed node once this many rounds are finished")
    p.add_argument("--kill-superlink-after-round", type=int, default=None,
                   help="fault injection: SIGKILL the SuperLink and its ServerApp once this many rounds are finished")
    p.add_argument("--resume", action="store_true",
                   help="continue the checkpoint in <work-dir>/output (same --work-dir; the nodes keep node_state)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Deploy, run, collect; returns the results dict (also in ``<work-dir>/results.json``)."""
    args = parse_args(argv)
    for tool in ("flower-superlink", "flower-supernode", "flwr", "openssl"):
        if shutil.which(tool) is None:
            raise DeployError(f"{tool} not found: pip install -r requirements-flower.txt (openssl from the system)")
    output_dir = os.path.join(os.path.abspath(args.work_dir), "output")
    resume = ["--resume"] if args.resume else []  # flags before the KEY VALUE overrides
    args.opts = " ".join([*resume, args.opts, f"OUTPUT_DIR {output_dir} FED.SHOW_PROGRESS False"]).strip()
    results_path = os.path.join(output_dir, "results.json")
    if args.resume and not os.path.isfile(os.path.join(output_dir, "checkpoint.pt")):
        raise DeployError(f"--resume: no checkpoint in {output_dir} (pass the --work-dir of the earlier run)")
    if os.path.isfile(results_path) and not args.resume:
        os.remove(results_path)
    if not args.clip_weights:
        args.clip_weights = default_clip_weights(args)
    dep = Deployment(args)
    try:
        dep.start_superlink()
        dep.register_nodes()
        for k in range(args.num_nodes):
            dep.start_node(k)
        dep.run_app()
        dep.wait(results_path)
    finally:
        dep.stop()
    if not os.path.isfile(results_path):
        cause = last_error(dep.logs)
        raise DeployError(f"the run wrote no {results_path}" + (f": {cause}" if cause else "") + f" (logs: {dep.logs})")
    shutil.copy(results_path, os.path.join(dep.work, "results.json"))
    with open(results_path) as f:
        return json.load(f)


if __name__ == "__main__":
    try:
        res = main()
    except DeployError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(res["final"], indent=2))
