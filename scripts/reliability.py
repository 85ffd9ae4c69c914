"""The kill suite: SIGKILL the nightly driver in each stage (and one Horovod worker mid-epoch), run the
same command again, and check that every table ends identical to an uninterrupted run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]

GUIDE = """\
Too slow for CI (one nightly on a small slice takes minutes); run it by hand:

    .venv/bin/python scripts/reliability.py                       # every stage, then the worker kill
    .venv/bin/python scripts/reliability.py --stages ingest:end,worker

Kill points (`--stages`, comma separated):
    <stage>            when the driver prints `[nightly] <stage> ...` (the stage has just started)
    <stage>:end        when it prints `[nightly] <stage>: N rows in Xs`: the stage's work is committed
                       but `ops.stage_log` does not know it yet, so the next run does the stage again
    ingest:mid         after bronze.flights is committed, before the other sources
    train:baselines    after Horovod training finished, before the model is registered
    worker             SIGKILL of one Horovod rank process (`horovod.spark.task.gloo_exec_fn`) after
                       the first epoch line: the run must fail with a clear message, register no
                       model, and the next run must resume from the checkpoint
Stages: landing, ingest, clean, features, train, score, evaluate, report.

What "identical" means (the rule): for every table of the lakehouse, the row count and a sha256 of
its rows, sorted, after leaving out what legitimately differs between two runs of the same data:
  - run identity and wall-clock time: run ids, `*_at` timestamps, `_ingest_time`, seconds and
    samples per second and busy cores (also inside JSON columns such as `results.models.metrics`);
  - model versions, model paths, code version and config hash: the lakehouse root is part of the
    configuration, so each run's model version differs even for the same model;
  - Delta table versions recorded in rows (`*_version`): a killed run may have committed versions
    that the next run replaces, so the same content can sit at a later version; likewise the
    feature spec's `fitted_on` (a features version and a digest of file names, which carry each
    write's id) and when a feed gap was noted (`noted_at`);
  - floats are compared to 9 significant digits (training is deterministic on CPU; this only
    absorbs the last bits of aggregation order).
The run bookkeeping (`results.runs`, `ops.stage_log`) describes the runs, not the data: a resumed run
skips stages and takes another run id, so those two are compared on (job, run_date, status) and
(run_date, stage) only. Everything else must match exactly: nothing duplicated, nothing lost.

Exit status: 0 when every check passed, 1 otherwise.
"""
sys.path.insert(0, str(PROJECT))

STAGES = ("landing", "ingest", "clean", "features", "train", "score", "evaluate", "report")
# The slice and hyper-parameters of tests/test_nightly.py: two months of training rows, and settings
# with which the model beats the logistic regression, so it is blessed and the run reaches the
# stages after train. (With the full-year defaults a smaller slice's model is rejected and the run
# stops at score, by design, which leaves nothing to kill there.)
SLICE = {"date": date(2013, 3, 20), "set": [
    "pipeline.splits.train=[2013-01-01,2013-02-28]", "pipeline.splits.validation=[2013-03-01,2013-03-14]",
    "pipeline.splits.test=[2013-03-15,2013-03-31]",
    "training.epochs=6", "training.learning_rate=0.001", "training.dropout=0.1", "training.l2=0.00001",
    "training.embedding_dim=8", "training.warmup_epochs=1", "training.early_stopping_patience=2"]}
COMMON = ["training.batch_size=256", "training.num_proc=2", "nightly.baselines=[logreg]",
          "lakehouse.model_input_row_group_rows=1024", "spark.master=local[2]", "spark.shuffle_partitions=2",
          "spark.conf.spark.ui.enabled=false", "spark.conf.spark.ui.showConsoleProgress=false"]
EXTRA_POINTS = {"ingest:mid": "[ingest] bronze.flights:", "train:baselines": "[train] baselines"}

VOLATILE = {"_ingest_time", "_run_id", "run_id", "ingested_at", "scored_at", "created_at", "started_at",
            "ended_at", "finished_at", "seconds", "stage_seconds", "wall_seconds", "samples_per_sec",
            "samples_per_second", "cpu_cores", "model_version", "path", "code_version", "config_hash",
            "fitted_on", "noted_at", "mlflow_run_id"}
BOOKKEEPING = {"results.runs": ("job", "run_date", "status"), "ops.stage_log": ("run_date", "stage")}


def trigger_for(point: str) -> str:
    if point in EXTRA_POINTS:
        return EXTRA_POINTS[point]
    stage, _, when = point.partition(":")
    if stage not in STAGES or when not in ("", "end"):
        raise SystemExit(f"unknown kill point {point!r}: a stage ({', '.join(STAGES)}), <stage>:end, "
                         f"{', '.join(EXTRA_POINTS)} or worker")
    return f"[nightly] {stage}: " if when == "end" else f"[nightly] {stage} ..."


# ------------------------------------------------------------------------------------------------
# One nightly process, watched line by line


class Run:
    """`lakehouse-dl nightly --date D` in its own session, stdout and stderr collected as they come."""

    def __init__(self, root: Path, run_date: date, overrides: list[str], log: Path):
        cmd = [sys.executable, "-u", "-m", "pipelines.cli", "nightly", "--date", run_date.isoformat(),
               *sum((["--set", o] for o in [f"lakehouse.root={root}", *overrides]), [])]
        self.log = log.open("w")
        self.started = time.time()
        self.proc = subprocess.Popen(cmd, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True,
                                     # PYTHONPATH: the driver and its Spark workers run this checkout's code.
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
                                          "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT),
                                                                                      os.environ.get("PYTHONPATH")]))})
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [threading.Thread(target=self._drain, args=(s, b, tag), daemon=True)
                        for s, b, tag in ((self.proc.stdout, self.out, "out"), (self.proc.stderr, self.err, "err"))]
        for t in self.readers:
            t.start()

    def _drain(self, stream, into: list[str], tag: str) -> None:
        for text in stream:
            into.append(text)
            self.log.write(f"{tag}| {text}")
            self.log.flush()

    def seen(self, needle: str, anywhere: bool = False) -> bool:
        """A stdout line starts with `needle`; with `anywhere`, any line of either stream holds it
        (Horovod forwards the ranks' stdout, `[0]<stdout>:...`, to the driver's stderr)."""
        if anywhere:
            return any(needle in ln for ln in list(self.out) + list(self.err))
        return any(ln.startswith(needle) for ln in list(self.out))

    def wait_for(self, needle: str, timeout: float, anywhere: bool = False) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.seen(needle, anywhere):
                return True
            if self.proc.poll() is not None:
                self.finish(10)
                return self.seen(needle, anywhere)
            time.sleep(0.02)
        return False

    def kill_all(self) -> list[str]:
        """SIGKILL the driver's process group and every descendant; returns those that outlived the group
        (pyspark's daemon starts its own process group, so its workers are not in the driver's)."""
        import psutil

        try:
            family = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=60)
        time.sleep(2)
        survivors = []
        for p in family:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    survivors.append(f"{p.pid} {' '.join(p.cmdline())[:80]}")
                    p.kill()
            except psutil.NoSuchProcess:
                pass
        self.finish(10)
        return survivors

    def finish(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        for t in self.readers:
            t.join(timeout=10)
        self.log.flush()
        return code

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)


# ------------------------------------------------------------------------------------------------
# Table fingerprints


def _normal(value):
    """A value with what legitimately differs between runs left out (see the module docstring)."""
    if isinstance(value, float):
        return value if not math.isfinite(value) else float(f"{value:.9g}")
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in sorted(value.items()) if k not in VOLATILE}
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return _normal(json.loads(value))
        except ValueError:
            return value
    return value


def fingerprints(root: Path, overrides: list[str]) -> dict[str, tuple[int, str]]:
    """{table: (rows, sha256 of its normalised rows, sorted)} for every table under `root`."""
    from pipelines.config import load_config
    from pipelines.storage import Lakehouse

    cfg = load_config("local", [f"lakehouse.root={root}", *overrides])
    lakehouse = Lakehouse.from_config(cfg)
    out = {}
    for info in lakehouse.tables():
        rows = snapshot_rows(lakehouse.table(info.name))
        keep = BOOKKEEPING.get(info.name)
        lines = []
        for r in rows:
            if keep:
                r = {k: r[k] for k in keep}
            r = {k: v for k, v in r.items() if k not in VOLATILE and not k.endswith("_version")}
            # Each run has its own lakehouse folder, which paths in the rows (the model's config) name.
            lines.append(json.dumps(_normal(r), sort_keys=True, default=str).replace(str(root), "<root>"))
        lines.sort()
        out[info.name] = (len(rows), hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16])
    return out


def snapshot_rows(table) -> list[dict]:
    """The rows of a table's latest snapshot, partition values as the strings the Delta log holds.

    Read file by file from the add actions: no Spark needed, and this deltalake's
    `to_pyarrow_table` cannot build the dataset of a partitioned table with this pyarrow."""
    import urllib.parse

    import pyarrow as pa
    import pyarrow.parquet as pq

    actions = pa.table(table.delta().get_add_actions(flatten=True)).to_pylist()
    rows = []
    for action in actions:
        parts = {k[len("partition."):]: v for k, v in action.items() if k.startswith("partition.")}
        data = pq.read_table(os.path.join(table.path, urllib.parse.unquote(action["path"])))
        rows += [{**r, **parts} for r in data.to_pylist()]
    return rows


def differences(reference: dict, got: dict) -> list[str]:
    out = []
    for name in sorted(set(reference) | set(got)):
        a, b = reference.get(name), got.get(name)
        if a is None or b is None:
            out.append(f"{name}: {'missing' if b is None else 'not in the reference'}")
        elif a[0] != b[0]:
            out.append(f"{name}: {b[0]} rows, reference {a[0]}")
        elif a[1] != b[1]:
            out.append(f"{name}: same {a[0]} rows, other content")
    return out


# ------------------------------------------------------------------------------------------------
# The suite


@dataclass
class Outcome:
    point: str
    reached: bool = False
    killed_after: float = 0.0
    first_rc: int | None = None
    rerun_rc: int | None = None
    rerun_note: str = ""
    identical: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.reached and self.rerun_rc == 0 and self.identical and not self.problems


class Suite:
    def __init__(self, work: Path, run_date: date, overrides: list[str], timeout: float):
        self.work, self.run_date, self.overrides, self.timeout = work, run_date, overrides, timeout
        self.landing = work / "baseline-landing"

    def seed_baseline(self) -> None:
        """The raw files every run starts from, seeded once from the package: the days the nightly
        landing stage delivers (first split day to the day after the run date)."""
        from pipelines.stages import landing
        from pipelines.config import load_config

        cfg = load_config("local", [f"lakehouse.root={self.work / 'seed'}", *self.overrides])
        first = min(cfg.split(name)[0] for name in cfg.pipeline.splits)
        days = [first + timedelta(days=i) for i in range((self.run_date + timedelta(days=1) - first).days + 1)]
        landing.seed(cfg, dates=days)
        shutil.copytree(cfg.lakehouse.landing, self.landing)
        shutil.rmtree(self.work / "seed")

    def fresh_root(self, name: str) -> Path:
        root = self.work / name / "lakehouse"
        if root.parent.exists():
            shutil.rmtree(root.parent)
        root.mkdir(parents=True)
        from pipelines.config import load_config

        # The dataset's landing folder under this lakehouse (<root>/landing/<dataset>).
        shutil.copytree(self.landing, load_config("local", [f"lakehouse.root={root}", *self.overrides]).lakehouse.landing)
        return root

    def start(self, root: Path, log_name: str) -> Run:
        return Run(root, self.run_date, self.overrides, root.parent / log_name)

    def complete(self, root: Path, log_name: str) -> Run:
        run = self.start(root, log_name)
        try:
            run.finish(self.timeout)
        except subprocess.TimeoutExpired:
            run.kill_all()
        return run

    def reference(self, reuse: bool = False) -> dict:
        root = self.work / "reference" / "lakehouse"
        if reuse and any(root.glob("*/results/runs")):
            print(f"reference run: reusing {root}", flush=True)
            return fingerprints(root, self.overrides)
        root = self.fresh_root("reference")
        run = self.complete(root, "nightly.log")
        if run.proc.returncode != 0:
            raise SystemExit(f"the uninterrupted reference run failed (rc {run.proc.returncode}); see "
                             f"{root.parent / 'nightly.log'}:\n{run.stderr[-3000:]}")
        print(f"reference run: ok in {time.time() - run.started:.0f}s", flush=True)
        return fingerprints(root, self.overrides)

    def kill_point(self, point: str, reference: dict) -> Outcome:
        out = Outcome(point)
        root = self.fresh_root(point.replace(":", "-"))
        run = self.start(root, "killed.log")
        out.reached = run.wait_for(trigger_for(point), self.timeout)
        out.killed_after = time.time() - run.started
        if not out.reached:
            out.first_rc = run.proc.poll()
            out.problems.append(f"the run never printed {trigger_for(point)!r} (rc {out.first_rc})")
            run.kill_all()
            return out
        survivors = run.kill_all()
        out.first_rc = run.proc.returncode
        if survivors:
            out.problems.append(f"outlived the process group: {'; '.join(survivors)}")
        rerun = self.complete(root, "rerun.log")
        out.rerun_rc = rerun.proc.returncode
        out.rerun_note = "stale lock taken over" if rerun.seen("warning: [lock] taking over a stale lock") else "lock not stale?"
        if rerun.seen("[nightly] resuming"):
            out.rerun_note += ", resumed"
        if out.rerun_rc != 0:
            out.problems.append(f"rerun failed: {_failure_line(rerun)}")
            return out
        diff = differences(reference, fingerprints(root, self.overrides))
        out.identical = not diff
        out.problems += diff
        return out

    def worker(self, reference: dict) -> Outcome:
        """One Horovod rank SIGKILLed mid-epoch: a clear failure, no model registered, then a resume."""
        import psutil

        out = Outcome("worker")
        root = self.fresh_root("worker")
        run = self.start(root, "killed.log")
        # Rank 0 prints one line per epoch after its checkpoint, forwarded as `[0]<stdout>:epoch  1/3 ...`.
        ranks = []
        if run.wait_for("[nightly] train ...", self.timeout):
            # Find the ranks before the first epoch ends: on the slice an epoch lasts about a second,
            # so the kill must follow the epoch line at once to land in the middle of the next one.
            deadline = time.time() + self.timeout
            while not ranks and time.time() < deadline and run.proc.poll() is None:
                ranks = _ranks(run.proc.pid)
                time.sleep(0.2)
        # The first epoch's checkpoint (state.json) is written before rank 0 prints its line, and
        # the line reaches this process through Horovod and the driver: the checkpoint is the
        # earlier sign (epochs of the slice last about a second, early stopping ends it at the 3rd).
        deadline = time.time() + self.timeout
        while ranks and not out.reached and time.time() < deadline and run.proc.poll() is None:
            out.reached = run.seen("epoch  1/", anywhere=True) or _epochs_checkpointed(root) >= 1
            time.sleep(0.02)
        if not out.reached:
            out.problems.append(f"no Horovod rank process or no first epoch line (rc {run.proc.poll()})")
            run.kill_all()
            return out
        try:
            (_ranks(run.proc.pid) or ranks)[-1].kill()
        except psutil.NoSuchProcess:
            out.problems.append("the rank was gone before the kill: training ended before it (epochs too short)")
        out.killed_after = time.time() - run.started
        try:
            out.first_rc = run.finish(600)
        except subprocess.TimeoutExpired:
            out.problems.append("the driver did not fail within 10 minutes of the rank's death")
            run.kill_all()
            return out
        failure = run.stderr
        if run.seen("epoch  3/", anywhere=True):
            out.problems.append("the rank was killed after the last epoch: not mid-training")
        if out.first_rc != 1 or "FAILED: stage 'train'" not in failure or "checkpointed" not in failure:
            out.problems.append(f"no clear failure: rc {out.first_rc}, {_failure_line(run)}")
        models = fingerprints(root, self.overrides).get("results.models", (0, ""))[0]
        if models:
            out.problems.append(f"results.models holds {models} row(s) after the failed run")
        rerun = self.complete(root, "rerun.log")
        out.rerun_rc = rerun.proc.returncode
        resumed = [ln for ln in rerun.out + rerun.err if "resuming model" in ln]
        out.rerun_note = resumed[0].split(":", 1)[-1].strip() if resumed else "trained from scratch"
        if not resumed or "after epoch 0" in resumed[0]:
            out.problems.append("the rerun did not resume from a checkpoint")
        if out.rerun_rc != 0:
            out.problems.append(f"rerun failed: {_failure_line(rerun)}")
            return out
        diff = differences(reference, fingerprints(root, self.overrides))
        out.identical = not diff
        out.problems += diff
        return out


def _epochs_checkpointed(root: Path) -> int:
    """The most epochs any model folder under the lakehouse `root` has checkpointed (state.json)."""
    done = 0
    for state in root.glob("*/models/*/state.json"):
        try:
            done = max(done, int(json.loads(state.read_text()).get("epochs_done", 0)))
        except (OSError, ValueError):
            continue   # being written
    return done


def _ranks(pid: int) -> list:
    """The Horovod rank processes under the driver `pid` now (the innermost gloo_exec_fn processes)."""
    import psutil

    try:
        family = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p for p in family if "gloo_exec_fn" in " ".join(_cmdline(p))
            and not any("gloo_exec_fn" in " ".join(_cmdline(c)) for c in _children(p))]


def _cmdline(p) -> list[str]:
    try:
        return p.cmdline()
    except Exception:  # gone, or a zombie: not a rank to kill
        return []


def _children(p) -> list:
    try:
        return p.children()
    except Exception:
        return []


def _failure_line(run: Run) -> str:
    lines = [ln.strip() for ln in run.err if ln.startswith(("FAILED:", "refused:", "configuration error:"))]
    return lines[0][:600] if lines else f"rc {run.proc.returncode}, last stderr: {run.stderr[-400:].strip()}"


def print_table(outcomes: list[Outcome]) -> None:
    header = f"{'killed at':18} {'reached':>7} {'after':>6} {'1st rc':>6} {'rerun':>5} {'identical':>9}  notes"
    print("\n" + header + "\n" + "-" * len(header))
    for o in outcomes:
        print(f"{o.point:18} {'yes' if o.reached else 'NO':>7} {o.killed_after:>5.0f}s {str(o.first_rc):>6} "
              f"{('ok' if o.rerun_rc == 0 else str(o.rerun_rc)):>5} {('yes' if o.identical else 'NO'):>9}  {o.rerun_note}")
        for p in o.problems:
            print(f"{'':20}- {p}")
    print(f"\n{sum(o.ok for o in outcomes)} of {len(outcomes)} kill points passed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip(), epilog=GUIDE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default=",".join([*STAGES, "worker"]),
                        help="comma-separated kill points (default: every stage, then worker); see the docstring")
    parser.add_argument("--workdir", type=Path, help="where the lakehouses go (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the lakehouses and logs afterwards")
    parser.add_argument("--reuse-reference", action="store_true",
                        help="reuse the reference lakehouse a --keep run left in --workdir (same slice)")
    parser.add_argument("--timeout", type=float, default=1500, help="seconds one nightly run may take")
    args = parser.parse_args(argv)
    points = [p.strip() for p in args.stages.split(",") if p.strip()]
    for p in points:
        if p != "worker":
            trigger_for(p)
    plan = SLICE
    overrides = [*plan["set"], *COMMON]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lakehouse-reliability-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"kill suite: {', '.join(points)} on the nightly of {plan['date']} (the slice of "
          f"tests/test_nightly.py) in {work}", flush=True)
    suite = Suite(work, plan["date"], overrides, args.timeout)
    started = time.time()
    outcomes = []
    try:
        if not (args.reuse_reference and suite.landing.is_dir()):
            suite.seed_baseline()
        reference = suite.reference(reuse=args.reuse_reference)
        for point in points:
            t0 = time.time()
            outcome = suite.worker(reference) if point == "worker" else suite.kill_point(point, reference)
            print(f"{point}: {'ok' if outcome.ok else 'FAILED'} in {time.time() - t0:.0f}s"
                  + (f" ({'; '.join(outcome.problems)[:300]})" if outcome.problems else ""), flush=True)
            outcomes.append(outcome)
    finally:
        if outcomes:
            print_table(outcomes)
        print(f"total {time.time() - started:.0f}s; logs and lakehouses in {work}"
              + ("" if args.keep else " (removed)"))
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if outcomes and all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
