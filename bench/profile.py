"""Where a block of pipeline work spends its time: Spark jobs, stages and tasks, shuffle and input
bytes, executor run/CPU/GC time, files read by Spark's scans, Delta commits and the files they added,
and the CPU of the driver, the JVM and Spark's Python workers.

    >>> with StageProfile(spark, lakehouse_root) as p:
    ...     bronze.ingest(cfg, spark)
    >>> p.figures()["spark"]["jobs"]

Where the figures come from (a few REST calls and two folder walks per block):

- Spark: the application's own monitoring REST API (`spark.sparkContext.uiWebUrl` +
  `/api/v1/applications/<appId>/jobs|stages|sql`). A job belongs to the block when its id is above
  every job id seen before the block (ids are sequential); its stages are the ones its `stageIds`
  name that ran (skipped stages ran in an earlier job and are not counted again). The API needs the
  web UI (`spark.ui.enabled`, on by default and in conf/); when it is off or unreachable, the Spark
  figures say "unavailable" and the block goes on. The UI keeps only the last
  `spark.ui.retainedJobs` / `spark.ui.retainedStages` / `spark.sql.ui.retainedExecutions` (1,000 by
  default): `PROFILE_SPARK_SETTINGS` raises them for a benchmark session, and a block whose jobs were
  dropped says so (`"truncated"`) instead of under-counting silently.
- Files read: Spark's own SQL metric "number of files read" of every file scan (`Scan parquet`,
  `Scan binaryFile` (the landing files bronze reads), `Scan csv`, ...) of the SQL executions that
  started in the block, summed per format. A file scanned by two queries counts twice: it is file
  opens by scans, not distinct files. Reads outside Spark (delta-rs opening a log) are not in it.
- Delta: every table under the lakehouse root (a folder with `_delta_log/`); a commit is a new
  `_delta_log/<version>.json` file. The add/remove actions of the new commits give the Parquet files
  written and removed (delta-rs writes them from Spark tasks, then commits on the driver).
- CPU (psutil, /proc): user+system seconds of the driver Python process, of the Java processes
  below it (the driver JVM: in local mode the executors run in it), and of every other process below
  it (Spark's Python daemon and workers, and what they start, e.g. Horovod ranks). A worker that
  exits is reaped by its parent (pyspark's daemon waits for its children), and Linux adds its CPU to
  the parent's "children" times, which are counted too; so a snapshot before and after is exact
  except for a process whose parent died before it (re-parented to init: lost).
"""
from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from pathlib import Path

UNAVAILABLE = "unavailable"
# Spark settings for a benchmark session so that the UI keeps every job, stage and SQL execution of a
# long run (the defaults keep 1,000 of each; ×10 of the pipeline runs more). `spark.conf.` is the
# configuration path of cfg.spark.conf (`bench_config` overrides).
PROFILE_SPARK_SETTINGS = ("spark.conf.spark.ui.enabled=true", "spark.conf.spark.ui.retainedJobs=20000",
                          "spark.conf.spark.ui.retainedStages=20000",
                          "spark.conf.spark.sql.ui.retainedExecutions=20000")
_VERSION_FILE = re.compile(r"^\d{20}\.json$")


class StageProfile:
    """Context manager: what the block did (see the module docstring). `figures()` after the block.

    `spark` may be None (no Spark figures); `lakehouse_root` may be None (no Delta figures).
    `timeout_s` bounds each REST call (tried twice); `settle_s` is how long to wait, after the block, for Spark's listener to mark the block's jobs
    finished (the REST API is fed asynchronously).
    """

    def __init__(self, spark=None, lakehouse_root: str | Path | None = None, timeout_s: float = 30.0,
                 settle_s: float = 5.0):
        self.spark = spark
        self.root = Path(lakehouse_root) if lakehouse_root else None
        self.timeout_s = timeout_s
        self.settle_s = settle_s
        self._figures: dict = {}

    # -- the block --------------------------------------------------------------------------------
    def __enter__(self):
        entered = time.perf_counter()
        self._api = self._api_base()
        self._jobs0 = self._safe(lambda: self._get("jobs"))
        self._sql0 = self._safe(lambda: self._get("sql?details=false&planDescription=false&length=1000000"))
        self._logs0 = delta_logs(self.root) if self.root else {}
        self._cpu0 = cpu_snapshot()
        self._t0 = time.perf_counter()
        self._enter_s = self._t0 - entered
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self._t0
        cpu1 = cpu_snapshot()
        figures: dict = {"wall_seconds": round(wall, 2)}
        try:
            figures["spark"] = self._spark_figures()
        except Exception as e:   # noqa: BLE001 — a profile never fails the work it measures
            figures["spark"] = {"status": f"{UNAVAILABLE}: {type(e).__name__}: {str(e)[:200]}"}
        try:
            figures["delta"] = delta_figures(self._logs0, delta_logs(self.root)) if self.root else {
                "status": f"{UNAVAILABLE}: no lakehouse root given"}
        except Exception as e:   # noqa: BLE001
            figures["delta"] = {"status": f"{UNAVAILABLE}: {type(e).__name__}: {str(e)[:200]}"}
        figures["cpu"] = cpu_figures(self._cpu0, cpu1)
        # What the profile itself took before and after the block (REST calls, listener wait, folder walks).
        figures["profile_overhead_seconds"] = round(self._enter_s + time.perf_counter() - self._t0 - wall, 2)
        self._figures = figures
        return False

    def figures(self) -> dict:
        return self._figures

    # -- Spark's REST API -------------------------------------------------------------------------
    def _api_base(self) -> str | None:
        if self.spark is None:
            return None
        try:
            sc = self.spark.sparkContext
            url = sc.uiWebUrl
            return f"{url}/api/v1/applications/{sc.applicationId}" if url else None
        except Exception:   # noqa: BLE001 — a stopped context
            return None

    def _get(self, what: str):
        if not self._api:
            raise ConnectionError("no Spark web UI (spark.ui.enabled=false, or no SparkSession)")
        # One retry: on a loaded machine (2 cores, load 10+) the UI's Jetty threads answer late.
        for attempt in (1, 2):
            try:
                with urllib.request.urlopen(f"{self._api}/{what}", timeout=self.timeout_s) as response:
                    return json.loads(response.read())
            except TimeoutError:
                if attempt == 2:
                    raise

    def _wait_for_listener(self) -> None:
        """Let Spark's listener bus deliver every event of the block to the store the REST API reads
        (an action returns before its job-end event is processed). LiveListenerBus.waitUntilEmpty is
        private[spark] in Scala but public to py4j; when it is not reachable, the polling below waits."""
        try:
            self.spark.sparkContext._jsc.sc().listenerBus().waitUntilEmpty(int(self.settle_s * 1000))
        except Exception:   # noqa: BLE001 — a timeout, or another Spark: poll the jobs instead
            pass

    @staticmethod
    def _safe(call):
        try:
            return call()
        except Exception as e:   # noqa: BLE001
            return e

    def _spark_figures(self) -> dict:
        if self.spark is None:
            return {"status": f"{UNAVAILABLE}: no SparkSession"}
        if isinstance(self._jobs0, Exception):
            return {"status": f"{UNAVAILABLE}: {type(self._jobs0).__name__}: {str(self._jobs0)[:200]}"}
        last_job = max((j["jobId"] for j in self._jobs0), default=-1)
        self._wait_for_listener()
        deadline = time.monotonic() + self.settle_s
        while True:
            jobs = [j for j in self._get("jobs") if j["jobId"] > last_job]
            running = [j for j in jobs if j.get("status") == "RUNNING"]
            if not running or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        out: dict = {"status": "ok", "jobs": len(jobs),
                     "jobs_failed": sum(j.get("status") == "FAILED" for j in jobs),
                     "jobs_still_running": len(running)}
        if jobs:
            # Job ids are sequential: ids missing between the first new one and the last were dropped by
            # the UI's retention (spark.ui.retainedJobs).
            expected = max(j["jobId"] for j in jobs) - last_job
            if expected > len(jobs):
                out["truncated"] = f"{expected - len(jobs)} of {expected} jobs dropped by spark.ui.retainedJobs"
                out["jobs"] = expected
        stage_ids = {s for j in jobs for s in j.get("stageIds", [])}
        stages = [s for s in self._get("stages") if s["stageId"] in stage_ids and s.get("status") != "SKIPPED"] \
            if stage_ids else []
        seen = {s["stageId"] for s in stages}
        skipped = sum(j.get("numSkippedStages", 0) for j in jobs)
        if len(stage_ids) - skipped > len(seen) and "truncated" not in out:
            out["truncated"] = (f"{len(stage_ids) - skipped - len(seen)} stages dropped by spark.ui.retainedStages "
                                "(their metrics are missing)")

        def total(key):
            return sum(s.get(key, 0) or 0 for s in stages)

        out.update({
            "stages": len(seen), "stage_attempts": len(stages),
            "stages_failed": sum(s.get("status") == "FAILED" for s in stages),
            "tasks": total("numCompleteTasks") + total("numFailedTasks") + total("numKilledTasks"),
            "tasks_failed": total("numFailedTasks"), "tasks_killed": total("numKilledTasks"),
            "input_bytes": total("inputBytes"), "input_records": total("inputRecords"),
            "output_bytes": total("outputBytes"), "output_records": total("outputRecords"),
            "shuffle_read_bytes": total("shuffleReadBytes"), "shuffle_read_records": total("shuffleReadRecords"),
            "shuffle_write_bytes": total("shuffleWriteBytes"), "shuffle_write_records": total("shuffleWriteRecords"),
            "spill_memory_bytes": total("memoryBytesSpilled"), "spill_disk_bytes": total("diskBytesSpilled"),
            # executorRunTime and jvmGcTime are milliseconds, executorCpuTime nanoseconds (Spark's units).
            "executor_run_seconds": round(total("executorRunTime") / 1e3, 2),
            "executor_cpu_seconds": round(total("executorCpuTime") / 1e9, 2),
            "jvm_gc_seconds": round(total("jvmGcTime") / 1e3, 2),
        })
        out["files_read_by_scans"] = self._scan_files()
        return out

    def _scan_files(self) -> dict | str:
        """'number of files read' of every file scan of the SQL executions that started in the block, by format."""
        if isinstance(self._sql0, Exception):
            return f"{UNAVAILABLE}: {type(self._sql0).__name__}"
        last = max((e["id"] for e in self._sql0), default=-1)
        # offset is a position in the retained list, not an id: start from where the list ended
        # before the block, and from 0 when executions were dropped meanwhile (a full list drops
        # one for each new one, so the offset finds nothing).
        new = [e for e in self._get(f"sql?details=true&planDescription=false&offset={len(self._sql0)}&length=1000000")
               if e["id"] > last]
        if not new or min(e["id"] for e in new) != last + 1:
            new = [e for e in self._get("sql?details=true&planDescription=false&length=1000000") if e["id"] > last]
        by_format: dict[str, int] = {}
        for execution in new:
            for node in execution.get("nodes", []):
                name = node.get("nodeName", "")
                if not name.startswith("Scan "):
                    continue
                for metric in node.get("metrics", []):
                    if metric.get("name") == "number of files read":
                        fmt = name.split()[1] if len(name.split()) > 1 else name
                        by_format[fmt] = by_format.get(fmt, 0) + _metric_int(metric.get("value"))
        return {"total": sum(by_format.values()), **dict(sorted(by_format.items())), "sql_executions": len(new)}


def _metric_int(value) -> int:
    digits = re.sub(r"[^\d]", "", str(value or "").split("\n")[0])
    return int(digits) if digits else 0


# ------------------------------------------------------------------------------------------------
# Delta


def delta_logs(root: Path | None) -> dict[str, set[str]]:
    """{table folder: names of its `_delta_log/<version>.json` files} of every Delta table under `root`."""
    found: dict[str, set[str]] = {}
    if root is None or not Path(root).exists():
        return found
    for folder, dirs, _ in os.walk(root):
        if "_delta_log" in dirs:
            log = Path(folder) / "_delta_log"
            try:
                found[folder] = {n for n in os.listdir(log) if _VERSION_FILE.match(n)}
            except OSError:
                found[folder] = set()
            dirs[:] = []   # a table's partition folders hold no other table
    return found


def delta_figures(before: dict[str, set[str]], after: dict[str, set[str]]) -> dict:
    """New commits per table, and the Parquet files (and bytes) their add and remove actions name."""
    per_table: dict[str, int] = {}
    added = removed = added_bytes = 0
    common = os.path.commonpath(list(after)) if len(after) > 1 else None
    for table, names in after.items():
        new = sorted(names - before.get(table, set()))
        if not new:
            continue
        label = os.path.relpath(table, common) if common else os.path.basename(table)
        per_table[label] = len(new)
        for name in new:
            try:
                lines = (Path(table) / "_delta_log" / name).read_text().splitlines()
            except OSError:
                continue
            for line in lines:
                if '"add"' in line or '"remove"' in line:
                    action = json.loads(line)
                    if "add" in action:
                        added += 1
                        added_bytes += action["add"].get("size", 0) or 0
                    elif "remove" in action:
                        removed += 1
    return {"commits": sum(per_table.values()), "tables_committed": len(per_table),
            "parquet_files_added": added, "parquet_bytes_added": added_bytes, "parquet_files_removed": removed,
            "commits_per_table": per_table}


# ------------------------------------------------------------------------------------------------
# CPU of the driver, its JVM and Spark's Python workers


def cpu_snapshot(pid: int | None = None) -> dict:
    """CPU seconds now: the driver Python's own, its Java descendants' own, and everything else below
    it (other descendants' own plus the reaped children's times of every live process in the tree)."""
    import psutil

    out = {"driver_python": 0.0, "jvm": 0.0, "python_workers": 0.0, "worker_processes": 0,
           "at": time.perf_counter()}
    try:
        me = psutil.Process(pid or os.getpid())
        t = me.cpu_times()
        out["driver_python"] = t.user + t.system
        out["python_workers"] += t.children_user + t.children_system
        tree = me.children(recursive=True)
    except psutil.Error:
        return out
    for p in tree:
        try:
            t = p.cpu_times()
            java = "java" in p.name()
        except psutil.Error:
            continue
        out["python_workers"] += t.children_user + t.children_system
        if java:
            out["jvm"] += t.user + t.system
        else:
            out["python_workers"] += t.user + t.system
            out["worker_processes"] += 1
    return out


def cpu_figures(before: dict, after: dict) -> dict:
    seconds = after["at"] - before["at"]
    out = {f"{k}_cpu_seconds": round(after[k] - before[k], 2) for k in ("driver_python", "jvm", "python_workers")}
    if out["python_workers_cpu_seconds"] < 0:
        # Processes counted before left the tree unreaped by it (re-parented to init, e.g. Horovod's
        # rank launchers): their CPU vanished from the sum, so the difference means nothing.
        out["python_workers_cpu_seconds"] = None
        out["python_workers_note"] = f"{UNAVAILABLE}: processes left the driver's process tree during the block"
    out["worker_processes_at_end"] = after["worker_processes"]
    total = sum(out[f"{k}_cpu_seconds"] or 0 for k in ("driver_python", "jvm", "python_workers"))
    out["busy_cores"] = round(total / seconds, 2) if seconds > 0 else None
    return out


# ------------------------------------------------------------------------------------------------
# One line and one table row


def _mb(n) -> str:
    return f"{n / 2**20:,.1f}" if isinstance(n, (int, float)) else "-"


def summary(figures: dict) -> dict:
    """The few figures of a profile that go in the report's table (None when unavailable)."""
    s = figures.get("spark", {}) if isinstance(figures.get("spark"), dict) else {}
    ok = s.get("status") == "ok"
    d = figures.get("delta", {})
    c = figures.get("cpu", {})
    files = s.get("files_read_by_scans") if ok else None
    return {
        "jobs": s.get("jobs") if ok else None,
        "tasks": s.get("tasks") if ok else None,
        "shuffle MB": round((s.get("shuffle_read_bytes", 0) + s.get("shuffle_write_bytes", 0)) / 2**20, 1) if ok else None,
        "files read": files.get("total") if isinstance(files, dict) else None,
        "files written": d.get("parquet_files_added"),
        "commits": d.get("commits"),
        "exec CPU s": s.get("executor_cpu_seconds") if ok else None,
        "GC s": s.get("jvm_gc_seconds") if ok else None,
        "py workers CPU s": c.get("python_workers_cpu_seconds"),
        "driver py CPU s": c.get("driver_python_cpu_seconds"),
    }


def line(figures: dict) -> str:
    """One compact line: jobs/stages/tasks, shuffle, files, commits and CPU."""
    s = figures.get("spark", {})
    d = figures.get("delta", {})
    c = figures.get("cpu", {})
    if s.get("status") == "ok":
        files = s.get("files_read_by_scans")
        read = files.get("total") if isinstance(files, dict) else "?"
        spark = (f"{s['jobs']} jobs/{s['stages']} stages/{s['tasks']} tasks"
                 f"{' (' + str(s['tasks_failed']) + ' failed)' if s.get('tasks_failed') else ''}, "
                 f"shuffle r/w {_mb(s['shuffle_read_bytes'])}/{_mb(s['shuffle_write_bytes'])} MB, "
                 f"input {_mb(s['input_bytes'])} MB, exec run/CPU/GC {s['executor_run_seconds']}/"
                 f"{s['executor_cpu_seconds']}/{s['jvm_gc_seconds']} s, files read by scans {read}"
                 f"{', TRUNCATED' if s.get('truncated') else ''}")
    else:
        spark = f"Spark {s.get('status', UNAVAILABLE)}"
    delta = (f"{d['commits']} Delta commits, {d['parquet_files_added']} parquet files written"
             if "commits" in d else f"Delta {d.get('status', UNAVAILABLE)}")
    cpu = (f"CPU s driver py/JVM/py workers {c.get('driver_python_cpu_seconds')}/{c.get('jvm_cpu_seconds')}/"
           f"{c.get('python_workers_cpu_seconds')}")
    return f"{spark}; {delta}; {cpu}"
