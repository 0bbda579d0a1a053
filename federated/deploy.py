"""``python -m federated.deploy``: rehearse a federation of hospitals on one machine.

Starts Flower's deployment engine for real: one ``flower-superlink`` and one ``flower-supernode`` per
site folder, as separate processes on 127.0.0.1 (free ports found at run time), then ``flwr run``
with the project's app (``pyproject.toml``, ``[tool.flwr.app]``). Each SuperNode gets only its own
folder through its node config, exactly as a hospital's node would. The run folder is the one the
simulation leaves (``best.pt``, ``last.pt``, ``metrics.json``, ``history.csv``, plots) plus
``deploy/`` (each process's log). On exit, normal or not, it stops the processes it started (and their
children), and nothing else.

Examples::

    python -m federated.deploy --sites /data/hospA /data/hospB /data/hospC --rounds 10 --out runs/deploy
    python -m federated.deploy --sites A B C --rounds 3 --tls                      # TLS with a test CA
    python -m federated.deploy --sites A B C --rounds 3 --kill-node 2 --kill-after-round 1
    python -m federated.deploy --sites A B C --rounds 3 --engine simulation        # same apps, simulated

Training flags (``--model``, ``--model-kwargs``, ``--lr``, ``--local-epochs``, ``--strategy``,
``--max-per-site``...) are those of ``python -m federated.train``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from federated.config import TrainConfig, parse_config
from federated.deployment import TRAIN_KEYS, DeployOptions

log = logging.getLogger("federated")

APP_DIR = Path(__file__).resolve().parent.parent  # the folder with pyproject.toml's [tool.flwr.app]
CONNECTION = "rehearsal"


class DeployError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen, what: str, log_file: Path, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise DeployError(f"{what} exited with code {proc.returncode} before it was ready; see {log_file}:\n{tail(log_file)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise DeployError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s; see {log_file}")


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc (Linux)."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def descendants(pid: int) -> set[int]:
    kids = _children()
    out, todo = set(), [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


@dataclass
class Federation:
    """The processes this rehearsal started; only these (and their children) are ever signalled."""

    folder: Path
    env: dict
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    # Children seen so far (Flower detaches SuperExec and app processes into their own sessions).
    seen: dict[int, str] = field(default_factory=dict)

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log_file = self.folder / f"{name}.log"
        with open(log_file, "ab") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.procs[name] = proc
        return proc

    def remember_children(self) -> None:
        for proc in list(self.procs.values()):
            if proc.poll() is None:
                for pid in descendants(proc.pid):
                    self.seen[pid] = _cmdline(pid)

    def kill(self, name: str) -> None:
        """SIGKILL one process and its children, as a crash would."""
        proc = self.procs[name]
        self.remember_children()
        victims = descendants(proc.pid)
        _signal(proc.pid, signal.SIGKILL)
        for pid in victims:
            _signal(pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        self.remember_children()
        for proc in self.procs.values():
            if proc.poll() is None:
                _signal(proc.pid, signal.SIGTERM)
        deadline = time.time() + 10
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                _signal(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        for pid, cmd in self.seen.items():
            # Only a process that still runs the command we saw (a pid can be reused by the system).
            if cmd and _cmdline(pid) == cmd:
                _signal(pid, signal.SIGKILL)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # a TOML basic string


def run_config(cfg: TrainConfig, opts: DeployOptions) -> dict:
    d = cfg.to_dict()
    rc = {key: d[key.replace("-", "_")] for key in TRAIN_KEYS}
    rc["model-kwargs"] = json.dumps(rc["model-kwargs"])
    rc.update({
        "out": str(opts.out.resolve()), "min-nodes": opts.min_nodes, "round-timeout": opts.round_timeout,
        "update-dtype": opts.update_dtype, "secagg": opts.secagg, "resume": opts.resume,
    })
    return rc


def write_certificates(folder: Path) -> dict[str, Path]:
    from federated.certs import make_test_certificates

    return make_test_certificates(folder)


def rehearse(sites: list[Path], cfg: TrainConfig, opts: DeployOptions, *, tls: bool, kill: tuple[int, int] | None,
             restart: bool, timeout: float, node_auth: bool = False) -> dict:
    out = opts.out
    folder = out / "deploy"
    folder.mkdir(parents=True, exist_ok=True)
    home = folder / "flwr-home"
    home.mkdir(exist_ok=True)
    bindir = str(Path(sys.executable).parent)
    for tool in ("flower-superlink", "flower-supernode", "flwr"):
        if not (Path(bindir) / tool).exists() and shutil.which(tool) is None:
            raise DeployError(f"{tool} not found beside {sys.executable}: install flwr (pip install -r requirements.txt)")
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "FLWR_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")
    port = free_port()
    certs = write_certificates(folder / "certs") if tls else None
    conn = f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\n'
    conn += f'root-certificates = "{certs["ca"]}"\n' if certs else "insecure = true\n"
    (home / "config.toml").write_text(conn)
    rc_file = folder / "run_config.toml"
    rc_file.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in run_config(cfg, opts).items()))
    fed = Federation(folder, env)
    security = (
        ["--ssl-ca-certfile", str(certs["ca"]), "--ssl-certfile", str(certs["server"]), "--ssl-keyfile", str(certs["server_key"])]
        if certs else ["--insecure"]
    )
    node_security = ["--root-certificates", str(certs["ca"])] if certs else ["--insecure"]

    keys: dict[int, tuple[Path, Path]] = {}
    if node_auth:
        from federated.certs import make_node_key

        keys = {i: make_node_key(folder / "node-keys", f"node-{i}") for i in range(len(sites))}
        security = [*security, "--enable-supernode-auth"]

    def node_cmd(i: int, site: Path) -> list[str]:
        cfg_str = f'data-path="{site.resolve()}" name="{site.name}" partition-id={i}'
        if cfg.cache_dir:
            cfg_str += f' cache-dir="{Path(cfg.cache_dir).resolve()}"'
        auth = ["--auth-supernode-private-key", str(keys[i][0])] if i in keys else []
        return [
            "flower-supernode", *node_security, *auth, "--superlink", f"127.0.0.1:{port}", "--port", str(free_port()),
            "--node-config", cfg_str, "--max-wait-time", str(int(timeout)),
        ]

    try:
        sl = fed.start("superlink", ["flower-superlink", *security, "--host", "127.0.0.1", "--port", str(port), "--disable-runtime-dependency-installation"])
        wait_for_port(port, sl, "the SuperLink", folder / "superlink.log")
        log.info("SuperLink on 127.0.0.1:%d (%s)", port, "TLS, test CA" if certs else "insecure, loopback only")
        for i, (_, public) in keys.items():
            # Node authentication: only SuperNodes whose public key the federation registered may connect.
            reg = subprocess.run(
                ["flwr", "supernode", "register", str(public), CONNECTION, "--name", sites[i].name],
                env=env, capture_output=True, text=True, timeout=120,
            )
            if reg.returncode != 0:
                raise DeployError(f"registering SuperNode {i}'s key failed: {(reg.stdout + reg.stderr).strip()[-800:]}")
        for i, site in enumerate(sites):
            fed.start(f"node-{i}", node_cmd(i, site))
            log.info("SuperNode %d: %s (log %s)", i, site, folder / f"node-{i}.log")
        deadline = time.time() + timeout
        watcher = threading.Thread(target=_watch, args=(fed, out, kill, restart, node_cmd, sites, deadline), daemon=True)
        watcher.start()
        cmd = ["flwr", "run", str(APP_DIR), CONNECTION, "--run-config", str(rc_file), "--stream"]
        log.info("flwr run: %d rounds, %s, min %d nodes", cfg.rounds, cfg.strategy, opts.min_nodes)
        with open(folder / "run.log", "ab") as f:
            run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            fed.procs["flwr-run"] = run
            assert run.stdout is not None
            for line in iter(run.stdout.readline, b""):
                f.write(line)
                f.flush()
                text = line.decode(errors="replace").rstrip()
                if text and _worth_showing(text):
                    print(text, flush=True)
            run.wait()
        if time.time() > deadline:
            raise DeployError(f"the run did not finish within {timeout:.0f} s (--timeout); stopped it; logs in {folder}")
        if not (out / "metrics.json").exists():
            raise DeployError(f"the run ended without metrics.json; see {folder / 'run.log'} and the node logs:\n{tail(folder / 'run.log')}")
        return json.loads((out / "metrics.json").read_text())
    finally:
        fed.stop_all()


def _worth_showing(text: str) -> bool:
    keys = ("round", "ROUND", "failed", "error", "Error", "held-out", "resuming", "Waiting", "took part")
    return any(k in text for k in keys)


def _watch(fed: Federation, out: Path, kill, restart: bool, node_cmd, sites, deadline: float) -> None:
    """Remember the processes' children; inject the requested fault (kill a node after a round); stop
    ``flwr run`` at the deadline (a silent hang would otherwise never end)."""
    killed_at = None
    while True:
        fed.remember_children()
        run = fed.procs.get("flwr-run")
        if run is not None and run.poll() is None and time.time() > deadline:
            log.error("time limit reached: stopping the run")
            _signal(run.pid, signal.SIGTERM)
        if kill is not None:
            node, after = kill
            rnd = _rounds_done(out)
            if killed_at is None and rnd >= after:
                log.warning("fault injection: killing SuperNode %d (%s) after round %d", node, sites[node], rnd)
                fed.kill(f"node-{node}")
                killed_at = rnd
            elif restart and killed_at is not None and rnd >= killed_at + 1 and f"node-{node}-restarted" not in fed.procs:
                log.warning("fault injection: restarting SuperNode %d after round %d", node, rnd)
                fed.procs[f"node-{node}-restarted"] = fed.start(f"node-{node}-restarted", node_cmd(node, sites[node]))
        if "flwr-run" in fed.procs and fed.procs["flwr-run"].poll() is not None:
            return
        time.sleep(0.5)


def _rounds_done(out: Path) -> int:
    path = out / "history.partial.json"
    try:
        return int(json.loads(path.read_text())["round"])
    except (OSError, ValueError, KeyError):
        return 0


def simulate(sites: list[Path], cfg: TrainConfig, opts: DeployOptions) -> dict:
    """The same ServerApp logic and ClientApp on Flower's simulation engine (one node per site)."""
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from federated.deployment import run_server
    from federated.flower_apps import app as client_app

    server = ServerApp()

    @server.main()
    def main(grid, context) -> None:
        run_server(grid, cfg, opts, site_paths=[str(s.resolve()) for s in sites])

    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False, "logging_level": "error"}}
    run_simulation(server_app=server, client_app=client_app, num_supernodes=len(sites), backend_config=backend)
    if not (opts.out / "metrics.json").exists():
        raise DeployError("the simulated run produced no metrics.json (see the Flower log above)")
    return json.loads((opts.out / "metrics.json").read_text())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m federated.deploy",
        description="Rehearse a federation on this machine with Flower's deployment engine (one SuperNode per site folder).",
        epilog="Any flag of python -m federated.train (--model, --model-kwargs, --lr, --strategy, --max-per-site...) is accepted too.",
    )
    p.add_argument("--sites", nargs="+", type=Path, required=True, help="one data folder per hospital")
    p.add_argument("--engine", choices=("deployment", "simulation"), default="deployment")
    p.add_argument("--tls", action="store_true", help="TLS with a test CA made for localhost (default: --insecure on loopback)")
    p.add_argument("--min-nodes", type=int, default=None, help="fewest nodes a round needs (default: all sites minus one, at least 2)")
    p.add_argument("--round-timeout", type=float, default=300.0, help="seconds a round waits for a node's reply")
    p.add_argument("--update-dtype", choices=("float32", "float16"), default="float32", help="precision of the updates nodes send")
    p.add_argument("--secagg", action="store_true", help="Flower's SecAgg+ protocol: the server learns only the sum of the updates")
    p.add_argument("--node-auth", action="store_true", help="SuperNode authentication: a key pair per node, registered with the SuperLink")
    p.add_argument("--kill-node", type=int, default=None, help="fault rehearsal: SIGKILL this SuperNode (0-based)...")
    p.add_argument("--kill-after-round", type=int, default=1, help="...once this round is done")
    p.add_argument("--restart-node", action="store_true", help="...and start it again one round later")
    p.add_argument("--timeout", type=float, default=3600.0, help="give up (and stop everything) after this many seconds")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    cfg = parse_config([*rest, "--mode", "federated"])
    if cfg.attack != "none":
        parser.error("--attack makes clients malicious in python -m federated.train's simulation only; a rehearsal of real nodes refuses it")
    missing = [str(s) for s in args.sites if not s.is_dir()]
    if missing:
        parser.error(f"site folder(s) not found: {', '.join(missing)}")
    if len(args.sites) < 2:
        parser.error("a federation needs at least 2 site folders")
    if args.kill_node is not None and not 0 <= args.kill_node < len(args.sites):
        parser.error(f"--kill-node must be between 0 and {len(args.sites) - 1}")
    min_nodes = args.min_nodes if args.min_nodes is not None else max(2, len(args.sites) - 1)
    if not 1 <= min_nodes <= len(args.sites):
        parser.error(f"--min-nodes must be between 1 and the number of sites ({len(args.sites)})")
    opts = DeployOptions(
        out=Path(cfg.out).resolve(), min_nodes=min_nodes, round_timeout=args.round_timeout,
        update_dtype=args.update_dtype, secagg=args.secagg, resume=cfg.resume,
    )
    try:
        if args.engine == "simulation":
            metrics = simulate(args.sites, cfg, opts)
        else:
            kill = (args.kill_node, args.kill_after_round) if args.kill_node is not None else None
            metrics = rehearse(
                args.sites, cfg, opts, tls=args.tls, kill=kill, restart=args.restart_node, timeout=args.timeout, node_auth=args.node_auth,
            )
    except (DeployError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the processes this run started were stopped", file=sys.stderr)
        return 130
    t = metrics["test"]["macro"]
    print(
        f"held-out records of the nodes: macro F1 {t['f1']:.3f}, AUROC {t['auroc']:.3f}; "
        f"{metrics['bytes']['up_total'] / 1e6:.1f} MB sent by nodes; outputs in {opts.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
