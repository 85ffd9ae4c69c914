"""The lakehouse lock: one writing job at a time (the nightly run, maintenance).

A job holds `<root>/_locks/<job>.lock` for its whole life, an O_EXCL file naming the holder; a
lock whose holder process is gone (killed) is taken over with a warning.
"""
from __future__ import annotations

import json
import logging
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger(__name__)


class LockHeldError(RuntimeError):
    """Another run holds the lakehouse."""


class LakehouseLock:
    """An exclusive lock on a lakehouse, held by one process (O_EXCL file with the holder's identity).

        >>> with LakehouseLock(root, job="nightly", run_id=run_id):
        ...     run_the_stages()
    """

    def __init__(self, root: str | Path, job: str, run_id: str):
        self.path = Path(root) / "_locks" / f"{job}.lock"
        self.holder = {"run_id": run_id, "pid": os.getpid(), "host": socket.gethostname(),
                       "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read_holder()
                if holder and self._is_stale(holder):
                    log.warning(f"[lock] taking over a stale lock of run {holder.get('run_id')} "
                                f"(pid {holder.get('pid')} on {holder.get('host')} is gone)")
                    self.path.unlink(missing_ok=True)
                    continue
                raise LockHeldError(
                    f"the lakehouse is held by run {holder.get('run_id', '?')} (pid {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')}, since {holder.get('started', '?')}); wait for it to finish, or "
                    f"remove {self.path} if that process is gone") from None
            with os.fdopen(fd, "w") as fh:
                json.dump(self.holder, fh)
            return
        raise LockHeldError(f"could not take {self.path}")

    def release(self) -> None:
        holder = self._read_holder()
        if holder and holder.get("run_id") == self.holder["run_id"]:
            self.path.unlink(missing_ok=True)

    def _read_holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    @staticmethod
    def _is_stale(holder: dict) -> bool:
        if holder.get("host") != socket.gethostname():
            return False  # cannot tell whether a process on another host lives: keep the lock
        try:
            os.kill(int(holder.get("pid", -1)), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError):
            return False
        return False

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False
