"""Real Ray clusters and MLflow servers on loopback, for tests and bench/scale_out.

Everything started here is recorded by PID and stopped by PID (never `ray stop`, which would
kill other people's Ray on a shared machine). A 2-node cluster on one machine needs: the head on
127.0.0.2 (the CLI rewrites 127.0.0.1 to the machine's address), the worker on another loopback
address (127.0.0.3, so trial placement is visible in Tune's `node_ip`), private ports for every
service, one temp dir per node, and a deadline on the worker's `ray start` (it retries forever
when the head is unreachable: our deadline stops it). gcs_server and raylet ignore SIGTERM: SIGKILL after a grace period.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

VENV_BIN = Path(sys.executable).parent
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"

# "1" lets a worker join (with "0", `ray start --address` refuses multi-node); every address we
# pass is loopback, so nothing listens beyond the machine.
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONDONTWRITEBYTECODE": "1"}


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct free TCP ports (bound then released at once; collisions are unlikely, not impossible)."""
    sockets, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind((host, 0))
            sockets.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports


def free_port_range(size: int) -> int:
    """The first port of `size` consecutive free ports in 20000-60000 (for Ray's worker ports)."""
    import random

    rng = random.Random(os.getpid() ^ time.time_ns())
    for _ in range(200):
        start = rng.randrange(20000, 60000 - size)
        try:
            held = []
            for port in range(start, start + size):
                s = socket.socket()
                held.append(s)
                s.bind(("0.0.0.0", port))
            return start
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError("no free port range found")


def _tree(pids: list[int]) -> set[psutil.Process]:
    procs: set[psutil.Process] = set()
    for pid in pids:
        try:
            p = psutil.Process(pid)
            procs.add(p)
            procs.update(p.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    return procs


def _mentioning(marker: str) -> set[psutil.Process]:
    """Processes whose command line names `marker` (our private temp dir): only ones we started."""
    found = set()
    for p in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error, TypeError):
            if any(marker in part for part in (p.info["cmdline"] or [])):
                found.add(p)
    return found


def kill_processes(procs: set[psutil.Process], grace_s: float = 3.0) -> None:
    """SIGTERM, wait, then SIGKILL whatever is left (gcs_server and raylet ignore SIGTERM)."""
    me = os.getpid()
    procs = {p for p in procs if p.pid != me}
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(list(procs), timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


@dataclass
class LoopbackCluster:
    """A head on 127.0.0.2 and `workers` worker nodes on 127.0.0.3, each with its own ports and temp dir."""

    cpus_per_node: int = 1
    workers: int = 1
    env: dict[str, str] = field(default_factory=dict)
    dashboard: bool = True  # `ray job submit` needs it; a sweep run through RAY_ADDRESS does not
    root: Path = field(init=False)  # short, under /tmp: Ray's socket paths are length-limited
    gcs_address: str = field(init=False, default="")
    dashboard_url: str = field(init=False, default="")
    _launchers: list[subprocess.Popen] = field(init=False, default_factory=list)
    _pids: set[int] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="rl8_", dir="/tmp"))

    def _node_args(self, avoid: tuple[int, ...] = ()) -> list[str]:
        names = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                 "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port")
        start = free_port_range(40)
        while any(start <= p < start + 40 for p in avoid):
            start = free_port_range(40)
        ports = [p for p in free_ports(len(names) + 40) if not start <= p < start + 40][:len(names)]
        args = [f"{n}={p}" for n, p in zip(names, ports)]
        return args + [f"--min-worker-port={start}", f"--max-worker-port={start + 39}",
                       f"--num-cpus={self.cpus_per_node}", "--num-gpus=0", "--object-store-memory=100000000",
                       "--disable-usage-stats"]

    def full_env(self) -> dict[str, str]:
        path = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
        env = {**os.environ, **RAY_ENV, "PATH": path, **self.env}
        for key in ("RAY_ADDRESS", "SYMM_RAY_ADDRESS"):
            env.pop(key, None)
        return env

    def start(self, timeout_s: float = 90) -> "LoopbackCluster":
        gcs_port, dash_port, client_port = free_ports(3)
        env = self.full_env()
        head_cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--node-ip-address={HEAD_IP}",
                    f"--port={gcs_port}", f"--ray-client-server-port={client_port}", f"--include-dashboard={str(self.dashboard).lower()}",
                    f"--dashboard-host={HEAD_IP}", f"--dashboard-port={dash_port}",
                    f"--temp-dir={self.root / 'head'}", *self._node_args((gcs_port, dash_port, client_port))]
        self._spawn(head_cmd, env, "head")
        self.gcs_address = f"{HEAD_IP}:{gcs_port}"
        self.dashboard_url = f"http://{HEAD_IP}:{dash_port}"
        self._wait_nodes(1, timeout_s)
        for i in range(self.workers):
            # --block keeps every node process in the launcher's tree; a worker that cannot reach
            # the head retries forever, so _wait_nodes' deadline is its timeout (stop() kills it).
            worker_cmd = [str(VENV_BIN / "ray"), "start", "--block",
                          f"--address={self.gcs_address}", f"--node-ip-address={WORKER_IP}",
                          f"--temp-dir={self.root / f'worker{i}'}", *self._node_args()]
            self._spawn(worker_cmd, env, f"worker{i}")
        self._wait_nodes(1 + self.workers, timeout_s)
        if self.dashboard:
            self._wait_http(self.dashboard_url + "/api/version", timeout_s)
        return self

    def _spawn(self, cmd: list[str], env: dict[str, str], name: str) -> None:
        log = open(self.root / f"{name}.log", "w")
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._launchers.append(proc)
        self._pids.add(proc.pid)

    def alive_nodes(self) -> list[dict]:
        out = subprocess.run([str(VENV_BIN / "python"), "-c", (
            "import json, ray; ray.init(address=%r, logging_level='ERROR');"
            "print(json.dumps([{'id': n['NodeID'], 'ip': n['NodeManagerAddress'], 'res': n['Resources']}"
            " for n in ray.nodes() if n['Alive']]))") % self.gcs_address],
            env=self.full_env(), capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            return []
        import json

        return json.loads(out.stdout.strip().splitlines()[-1])

    def _wait_nodes(self, n: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for proc in self._launchers:
                if proc.poll() is not None:
                    raise RuntimeError(f"ray start exited with {proc.returncode}: {self.logs()}")
            if len(self.alive_nodes()) >= n:
                return
            time.sleep(1)
        raise TimeoutError(f"cluster did not reach {n} nodes in {timeout_s} s: {self.logs()}")

    @staticmethod
    def _wait_http(url: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.root.glob("*.log")))

    def processes(self) -> set[psutil.Process]:
        """Every process of this cluster: the launchers' trees and anything naming our temp dir."""
        marked = _mentioning(str(self.root))
        return _tree(sorted(self._pids)) | marked | _tree([p.pid for p in marked])

    def worker_pids(self) -> set[int]:
        return {p.pid for p in self.processes()}

    def stop(self) -> None:
        procs = self.processes()
        kill_processes(procs)
        for proc in self._launchers:
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class MlflowServer:
    """`mlflow server` on 127.0.0.1 with the artifact proxy; optionally with basic auth."""

    root: Path
    auth: bool = False
    admin_password: str = "admin-pass-for-tests-only"
    port: int = field(init=False, default=0)
    proc: subprocess.Popen | None = field(init=False, default=None)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 90) -> "MlflowServer":
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_ports(1)[0]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        cmd = [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1"]
        if self.auth:
            ini = self.root / "basic_auth.ini"
            ini.write_text("[mlflow]\ndefault_permission = READ\n"
                           f"database_uri = sqlite:///{self.root / 'auth.db'}\n"
                           "admin_username = admin\n"
                           "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
            env.update(MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_AUTH_ADMIN_PASSWORD=self.admin_password,
                       MLFLOW_FLASK_SERVER_SECRET_KEY="test-secret-" + str(os.getpid()))
            cmd += ["--app-name", "basic-auth"]
        self.log = open(self.root / "server.log", "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=self.root)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=5):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError((self.root / "server.log").read_text()[-3000:])
                time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None:
            kill_processes(_tree([self.proc.pid]))
            with contextlib.suppress(Exception):
                self.proc.wait(timeout=5)
