"""A real Spark standalone cluster on 127.0.0.1 for tests: a Master and Workers started from the
pip pyspark with `spark-class`, each in its own process group, and always stopped."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def spark_home() -> Path:
    """The installed pyspark package folder, which holds bin/spark-class and the jars."""
    import pyspark

    return Path(pyspark.__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def live_members(pgid: int) -> list[int]:
    """Processes of a process group that are still running (zombies, which hold nothing, excluded)."""
    if not os.path.isdir("/proc"):
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except ProcessLookupError:
            return []
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                # The command name may hold spaces; the fields after its closing parenthesis do not.
                state, _ppid, group = fh.read().rpartition(")")[2].split()[:3]
        except OSError:
            continue
        if int(group) == pgid and state not in ("Z", "X"):
            members.append(int(entry))
    return members


class ClusterError(RuntimeError):
    """The cluster did not come up; the message carries the tail of its logs."""


class StandaloneCluster:
    """One Master and `workers` Workers on 127.0.0.1.

        >>> with StandaloneCluster(tmp_path) as cluster:
        ...     cluster.submit("jobs/smoke.py", "--report", "out.json", py_files=[zip_path])
    """

    def __init__(self, workdir: Path, workers: int = 2, cores: int = 1, memory: str = "1g",
                 python: str = sys.executable):
        self.workdir = Path(workdir)
        self.workers = workers
        self.cores = cores
        self.memory = memory
        self.python = python
        self.home = spark_home()
        self.processes: list[subprocess.Popen] = []
        self.master_url = ""
        self.webui_url = ""

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> "StandaloneCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """The environment of the daemons and of spark-submit."""
        return {
            **os.environ,
            "SPARK_HOME": str(self.home),
            # Bind everything to the loopback address: the machine's other address may not route.
            "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_WORKER_DIR": str(self.workdir / "work"),
            "SPARK_LOG_DIR": str(self.workdir / "logs"),
            # Small daemon heaps: the machine is shared and the daemons only schedule.
            "SPARK_DAEMON_MEMORY": "256m",
            # A port that is taken fails the start, instead of Spark silently moving to the next one.
            "SPARK_MASTER_OPTS": "-Dspark.port.maxRetries=0",
            "PYSPARK_PYTHON": self.python,
            "PYSPARK_DRIVER_PYTHON": self.python,
        }

    def start(self, timeout_s: float = 120.0, attempts: int = 3) -> None:
        """Start the Master and Workers and return once every Worker has registered."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(attempts):
            try:
                self._start_once(timeout_s)
                return
            except ClusterError:
                self.stop()  # ports taken or a slow start: try again on fresh ports
                if attempt == attempts - 1:
                    raise
            except BaseException:
                self.stop()
                raise

    def _start_once(self, timeout_s: float) -> None:
        port, webui = free_port(), free_port()
        self.master_url = f"spark://127.0.0.1:{port}"
        self.webui_url = f"http://127.0.0.1:{webui}"
        self._spawn("master", "org.apache.spark.deploy.master.Master",
                    "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(webui))
        for i in range(self.workers):
            self._spawn(f"worker-{i}", "org.apache.spark.deploy.worker.Worker",
                        "--host", "127.0.0.1", "--cores", str(self.cores), "--memory", self.memory,
                        "--webui-port", str(free_port()), "--work-dir", str(self.workdir / f"work-{i}"),
                        self.master_url)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            dead = [p for p in self.processes if p.poll() is not None]
            if dead:
                raise ClusterError(f"a Spark daemon exited with {dead[0].returncode}\n{self.log_tail()}")
            state = self.state()
            if state and len(self.alive_workers(state)) == self.workers:
                return
            time.sleep(0.5)
        raise ClusterError(f"{self.workers} workers did not register within {timeout_s:.0f}s\n{self.log_tail()}")

    def _spawn(self, name: str, main_class: str, *args: str) -> None:
        log = open(self.workdir / f"{name}.log", "ab")
        proc = subprocess.Popen([str(self.home / "bin" / "spark-class"), main_class, *args],
                                env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        proc.name = name  # type: ignore[attr-defined]
        self.processes.append(proc)

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop every daemon and what it started (executors): SIGTERM their groups, then SIGKILL."""
        groups = [p.pid for p in self.processes]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pgid in groups:
                try:
                    os.killpg(pgid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace_s
            while any(live_members(g) for g in groups) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not any(live_members(g) for g in groups):
                break
        for proc in self.processes:
            try:
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        self.processes = []

    # -- state -----------------------------------------------------------------------------------
    def state(self) -> dict | None:
        """The Master's web UI JSON (workers, cores, applications), or None while it is starting."""
        try:
            with urllib.request.urlopen(f"{self.webui_url}/json/", timeout=2) as response:
                return json.loads(response.read())
        except (OSError, ValueError):
            return None

    @staticmethod
    def alive_workers(state: dict) -> list[dict]:
        return [w for w in state.get("workers", []) if w.get("state") == "ALIVE"]

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for log in sorted(self.workdir.glob("*.log")):
            out.append(f"--- {log.name}")
            out.extend(log.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(out)

    # -- jobs ------------------------------------------------------------------------------------
    def submit(self, app: str | Path, *app_args: str, py_files: list[Path] = (), conf: dict | None = None,
               env: dict | None = None, timeout_s: float = 400) -> subprocess.CompletedProcess:
        """Run `spark-submit --master <this cluster>` of a Python application and wait for it."""
        settings = {
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.executor.memory": "512m",
            "spark.executor.cores": str(self.cores),
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            **(conf or {}),
        }
        cmd = [str(self.home / "bin" / "spark-submit"), "--master", self.master_url]
        if py_files:
            cmd += ["--py-files", ",".join(str(p) for p in py_files)]
        for key, value in settings.items():
            cmd += ["--conf", f"{key}={value}"]
        cmd += [str(app), *app_args]
        return subprocess.run(cmd, env={**self.env(), **(env or {})}, cwd=self.workdir,
                              capture_output=True, text=True, timeout=timeout_s)


@pytest.fixture(scope="session")
def standalone_cluster(tmp_path_factory):
    """A Master and two one-core Workers on 127.0.0.1 for the session, stopped at its end."""
    with StandaloneCluster(tmp_path_factory.mktemp("standalone")) as cluster:
        yield cluster
