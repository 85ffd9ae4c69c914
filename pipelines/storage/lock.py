"""The lakehouse lock: one writing job at a time (the nightly run, maintenance), across hosts.

A job holds `<root>/_locks/<job>.lock`, an O_EXCL file naming the holder, as a lease: a thread
of the holder rewrites its `heartbeat` every third of `lease_seconds`. Another process takes the
lock over only from a holder that is gone: on the same host, its pid no longer runs; on any host,
its heartbeat is older than the lease. A live holder, wherever it runs, keeps its lock.

    >>> with LakehouseLock(root, job="nightly", run_id=run_id):
    ...     run_the_stages()
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from pipelines.config import base_value

log = logging.getLogger(__name__)


class LockHeldError(RuntimeError):
    """Another run holds the lakehouse."""


class LakehouseLock:
    """An exclusive lease on a lakehouse, held by one process and renewed by its heartbeat.

    `lease_seconds` left out takes conf/base's `lakehouse.lock_lease_seconds`.
    """

    def __init__(self, root: str | Path, job: str, run_id: str, lease_seconds: float | None = None):
        if lease_seconds is None:
            lease_seconds = base_value("lakehouse.lock_lease_seconds")
        self.path = Path(root) / "_locks" / f"{job}.lock"
        self.lease_seconds = float(lease_seconds)
        self.holder = {"run_id": run_id, "pid": os.getpid(), "host": socket.gethostname(),
                       "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "lease_seconds": self.lease_seconds, "heartbeat": time.time()}
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read_holder()
                why = self._why_stale(holder) if holder else None
                if why and self._remove_if_still(holder):
                    log.warning(f"[lock] taking over a stale lock of run {holder.get('run_id')} "
                                f"(pid {holder.get('pid')} on {holder.get('host')} {why})")
                    continue
                if not holder:       # being written or just removed: look again
                    time.sleep(0.05)
                    continue
                raise LockHeldError(
                    f"the lakehouse is held by run {holder.get('run_id', '?')} (pid {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')}, since {holder.get('started', '?')}, alive "
                    f"{time.time() - float(holder.get('heartbeat', 0)):.0f}s ago); wait for it to finish, or "
                    f"remove {self.path} if that process is gone") from None
            self.holder["heartbeat"] = time.time()
            with os.fdopen(fd, "w") as fh:
                json.dump(self.holder, fh)
            self._start_heartbeat()
            return
        raise LockHeldError(f"could not take {self.path}")

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        holder = self._read_holder()
        if holder and holder.get("run_id") == self.holder["run_id"]:
            self.path.unlink(missing_ok=True)

    # -- the lease ----------------------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name=f"lease {self.path.name}", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        failing = False
        while not self._stop.wait(self.lease_seconds / 3):
            if self._read_holder().get("run_id") != self.holder["run_id"]:
                log.warning(f"[lock] {self.path} is no longer held by run {self.holder['run_id']}")
                return
            self.holder["heartbeat"] = time.time()
            partial = self.path.with_name(f"{self.path.name}.{os.getpid()}.beat")
            try:
                partial.write_text(json.dumps(self.holder))
                os.replace(partial, self.path)
                failing = False
            except OSError as exc:
                # A full disk: the lock file stays as it was (the pid still names a live holder
                # on this host) and the next beat tries again; the run itself meets the disk too.
                partial.unlink(missing_ok=True)
                if not failing:
                    log.warning(f"[lock] could not renew {self.path} (trying again every "
                                f"{self.lease_seconds / 3:.0f}s): {exc}")
                failing = True

    def _why_stale(self, holder: dict) -> str | None:
        """Why the holder is gone (its pid ended here, or its lease ran out), or None if it may live."""
        if holder.get("host") == socket.gethostname():
            try:
                os.kill(int(holder.get("pid", -1)), 0)
            except ProcessLookupError:
                return "is gone"
            except (PermissionError, ValueError):
                pass
        lease = float(holder.get("lease_seconds") or self.lease_seconds)
        silent = time.time() - float(holder.get("heartbeat", 0))
        if "heartbeat" in holder and silent > lease:
            return f"sent no heartbeat for {silent:.0f}s, more than its lease of {lease:.0f}s"
        return None

    def _remove_if_still(self, stale: dict) -> bool:
        """Remove the lock file if it still names the stale holder; False when another process
        took it over (or renewed it) in the meantime. Renaming is atomic: of two contenders, one
        moves the file away; the other finds nothing to move."""
        tomb = self.path.with_name(f"{self.path.name}.stale-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, tomb)
        except FileNotFoundError:
            return False
        moved = json.loads(tomb.read_text() or "{}")
        if moved.get("run_id") == stale.get("run_id") and moved.get("heartbeat") == stale.get("heartbeat"):
            tomb.unlink(missing_ok=True)
            return True
        # A fresh lock was moved by mistake: put it back unless yet another one is there already.
        try:
            os.link(tomb, self.path)
        except FileExistsError:
            pass
        tomb.unlink(missing_ok=True)
        return False

    def _read_holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False
