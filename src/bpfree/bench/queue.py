"""Run queues: every run of a suite is trained exactly once, however many workers share it.

Two implementations of one small interface (``claim`` a run, ``update`` its progress, ``finish``
or ``release`` it, list the ``active`` claims):

- :class:`FileQueue` (default; one machine, or several on a filesystem with working ``flock``):
  a worker claims a run by taking an exclusive ``flock`` on ``<record>.claim`` next to the record.
  The kernel drops the lock when the worker dies (even ``kill -9``), so a dead worker's claim is
  free again at once and its ``<record>.ckpt`` is resumed by whoever claims it next. After locking,
  the worker re-checks that the record is still missing and that the locked file is still the one
  at the path, so a run finished in the meantime is never trained twice.
- :class:`SqlQueue` (``--storage URL``; many machines without a shared disk): one row per run in
  the table ``bpfree_runs`` of any SQLAlchemy database (PostgreSQL, SQLite...). Claiming is an
  ``INSERT`` on the primary key, so exactly one worker wins; a worker refreshes ``heartbeat_at``
  every ``heartbeat_s``; a claim whose heartbeat is older than ``stale_after_s`` (dead worker or
  machine) is taken over by a conditional ``UPDATE`` that only one worker can win. Finished runs
  keep their record (JSON) in the row, so `bpfree report --storage` can gather all machines'
  results.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from ..records import RunRecord, is_done, record_path

__all__ = ["FileQueue", "SqlQueue", "make_queue", "worker_id", "run_key"]


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def run_key(suite: str, spec: Any) -> str:
    """Stable text identity of a run: ``suite/dataset/model/rule/seedN``."""
    return f"{suite}/{spec.dataset}/{spec.model}/{getattr(spec, 'rule_key', spec.rule)}/seed{spec.seed}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tidy(record: Path) -> None:
    """Remove what an interrupted worker may leave next to a *finished* record: its checkpoint,
    a half-written checkpoint, and an unlocked claim file."""
    for q in (record.with_suffix(".ckpt"), record.with_suffix(".ckpt.tmp")):
        q.unlink(missing_ok=True)
    claim = record.with_suffix(".claim")
    if claim.exists():
        try:
            fd = os.open(claim, os.O_RDWR)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            claim.unlink(missing_ok=True)
        except BlockingIOError:
            pass  # its holder is finishing it and removes it itself
        finally:
            os.close(fd)


# ------------------------------------------------------------------------------------------------
# file queue


class FileClaim:
    """An exclusive ``flock`` on ``<record>.claim``; its content is progress for humans."""

    def __init__(self, path: Path, fd: int, worker: str, label: str) -> None:
        self.path, self.fd, self.worker, self.label = path, fd, worker, label
        self.info: dict[str, Any] = {"worker": worker, "host": socket.gethostname(),
                                     "pid": os.getpid(), "run": label, "started": time.time()}
        self._write()

    def _write(self) -> None:
        data = json.dumps({**self.info, "heartbeat": time.time()}).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def update(self, **progress: Any) -> None:
        self.info.update(progress)
        self._write()

    def finish(self, rec: RunRecord) -> None:
        """The record is written: remove the claim file (racers re-check the record and skip)."""
        self.path.unlink(missing_ok=True)
        self.release()

    def release(self) -> None:
        """Give the run back unfinished (interrupt, error): the file stays, the lock goes."""
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the flock
            self.fd = -1


class FileQueue:
    """Claims by ``flock`` on ``<record>.claim`` files under ``out``."""

    kind = "file"

    def __init__(self, out: str | Path, suite: str, *, retry_failed: bool = False) -> None:
        self.out, self.suite, self.retry_failed = Path(out), suite, retry_failed
        self.worker = worker_id()

    def path(self, spec: Any) -> Path:
        return record_path(self.out, suite=self.suite, dataset=spec.dataset, model=spec.model,
                           rule=spec.rule_key, seed=spec.seed)

    def is_done(self, spec: Any) -> bool:
        return is_done(self.path(spec), retry_failed=self.retry_failed)

    def done_keys(self, specs: list[Any]) -> set[str]:
        return {run_key(self.suite, s) for s in specs if self.is_done(s)}

    def tidy(self, spec: Any) -> None:
        tidy(self.path(spec))

    def claim(self, spec: Any) -> FileClaim | None:
        """Lock the run's claim file, or None when another live worker holds it or it is done."""
        path = self.path(spec).with_suffix(".claim")
        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # the file may be replaced between open and lock: retry a few times
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:  # finished and removed by its holder just now
                same = False
            if not same:
                os.close(fd)
                continue
            if self.is_done(spec):  # finished while we were looking: our open may have
                path.unlink(missing_ok=True)  # re-created the claim file, so remove it (we hold
                os.close(fd)  # the lock on the current file; racers re-check and skip)
                return None
            return FileClaim(path, fd, self.worker, spec.label)
        return None

    def active(self) -> list[dict[str, Any]]:
        """Claims that look alive (progress of other workers), without touching their locks."""
        out = []
        root = self.out / self.suite if (self.out / self.suite).is_dir() else self.out
        for p in root.rglob("*.claim"):
            try:
                info = json.loads(p.read_text() or "{}")
            except (OSError, json.JSONDecodeError):
                continue
            if info.get("host") == socket.gethostname() and not _pid_alive(int(info.get("pid", 0))):
                continue  # a dead local worker's leftover; the next claimer reuses the file
            out.append(info)
        return out

    def records(self) -> list[RunRecord]:
        return []

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------------
# SQL queue


def engine_for(url: str) -> Any:
    """A SQLAlchemy engine; SQLite gets a long busy timeout (several processes share the file)."""
    import sqlalchemy as sa

    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 60}}
    return sa.create_engine(url, **kwargs)


def _runs_table(meta: Any) -> Any:
    import sqlalchemy as sa

    return sa.Table(
        "bpfree_runs", meta,
        sa.Column("suite", sa.String(200), primary_key=True),
        sa.Column("run_key", sa.String(700), primary_key=True),
        sa.Column("status", sa.String(20), nullable=False),  # running | done
        sa.Column("worker", sa.String(200)),
        sa.Column("claimed_at", sa.Float),
        sa.Column("heartbeat_at", sa.Float),
        sa.Column("attempts", sa.Integer, nullable=False, default=1),
        sa.Column("epoch", sa.Integer),
        sa.Column("val_acc", sa.Float),
        sa.Column("record_status", sa.String(20)),
        sa.Column("record", sa.Text),
    )


class SqlClaim:
    def __init__(self, q: "SqlQueue", key: str, label: str) -> None:
        self.q, self.key, self.label = q, key, label

    def update(self, **progress: Any) -> None:
        cols = {k: v for k, v in progress.items() if k in ("epoch", "val_acc")}
        self.q._update_mine(self.key, heartbeat_at=time.time(), **cols)

    def finish(self, rec: RunRecord) -> None:
        won = self.q._update_mine(self.key, status="done", heartbeat_at=time.time(),
                                  record_status=rec.status, record=json.dumps(rec.to_dict()))
        self.q._held.discard(self.key)
        if not won:
            import warnings
            warnings.warn(f"{self.key}: our claim was taken over as stale before we finished "
                          f"(raise --stale-after); the other worker's result will be kept",
                          stacklevel=2)

    def release(self) -> None:
        import sqlalchemy as sa

        t = self.q.table
        with self.q.engine.begin() as c:
            c.execute(sa.delete(t).where(t.c.suite == self.q.suite, t.c.run_key == self.key,
                                         t.c.worker == self.q.worker, t.c.status == "running"))
        self.q._held.discard(self.key)


class SqlQueue:
    """Claims as rows of ``bpfree_runs`` in a SQL database shared by every worker."""

    kind = "sql"

    def __init__(self, url: str, suite: str, *, out: str | Path | None = None,
                 stale_after_s: float = 300.0, heartbeat_s: float | None = None,
                 retry_failed: bool = False) -> None:
        import sqlalchemy as sa

        self.url, self.suite, self.out = url, suite, Path(out) if out else None
        self.stale_after_s = float(stale_after_s)
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else max(1.0, self.stale_after_s / 5)
        self.retry_failed = retry_failed
        self.worker = worker_id()
        self.engine = engine_for(url)
        meta = sa.MetaData()
        self.table = _runs_table(meta)
        for attempt in range(5):  # several workers may create the table at the same moment
            try:
                meta.create_all(self.engine, checkfirst=True)
                break
            except sa.exc.SQLAlchemyError:
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
        self._held: set[str] = set()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True, name="bpfree-heartbeat")
        self._beat.start()

    # -- helpers --
    def _update_mine(self, key: str, **values: Any) -> bool:
        import sqlalchemy as sa

        t = self.table
        with self.engine.begin() as c:
            res = c.execute(sa.update(t).where(t.c.suite == self.suite, t.c.run_key == key,
                                               t.c.worker == self.worker).values(**values))
        return res.rowcount == 1

    def _heartbeat(self) -> None:
        import sqlalchemy as sa

        t = self.table
        while not self._stop.wait(self.heartbeat_s):
            held = list(self._held)
            if not held:
                continue
            try:
                with self.engine.begin() as c:
                    c.execute(sa.update(t).where(t.c.suite == self.suite, t.c.run_key.in_(held),
                                                 t.c.worker == self.worker, t.c.status == "running")
                              .values(heartbeat_at=time.time()))
            except sa.exc.SQLAlchemyError as exc:  # the database may be briefly unreachable
                import warnings
                warnings.warn(f"heartbeat failed ({exc}); retrying", stacklevel=1)

    def _rows(self) -> Iterator[Any]:
        import sqlalchemy as sa

        t = self.table
        with self.engine.connect() as c:
            yield from c.execute(sa.select(t).where(t.c.suite == self.suite)).fetchall()

    # -- interface --
    def local_path(self, spec: Any) -> Path | None:
        if self.out is None:
            return None
        return record_path(self.out, suite=self.suite, dataset=spec.dataset, model=spec.model,
                           rule=spec.rule_key, seed=spec.seed)

    def done_keys(self, specs: list[Any]) -> set[str]:
        done = set()
        for r in self._rows():
            if r.status == "done" and not (self.retry_failed and r.record_status == "failed"):
                done.add(r.run_key)
        for s in specs:  # finished here before the queue existed, or written by hand
            p = self.local_path(s)
            if p is not None and is_done(p, retry_failed=self.retry_failed):
                done.add(run_key(self.suite, s))
        return done

    def is_done(self, spec: Any) -> bool:
        return run_key(self.suite, spec) in self.done_keys([spec])

    def tidy(self, spec: Any) -> None:
        p = self.local_path(spec)
        if p is not None and p.is_file():
            tidy(p)

    def claim(self, spec: Any) -> SqlClaim | None:
        import sqlalchemy as sa

        t, key, now = self.table, run_key(self.suite, spec), time.time()
        p = self.local_path(spec)
        if p is not None and is_done(p, retry_failed=self.retry_failed):
            return None
        try:
            with self.engine.begin() as c:
                c.execute(sa.insert(t).values(suite=self.suite, run_key=key, status="running",
                                              worker=self.worker, claimed_at=now, heartbeat_at=now,
                                              attempts=1))
        except sa.exc.IntegrityError:  # the row exists: done, alive elsewhere, or stale
            retry = (t.c.status == "running") & (t.c.heartbeat_at < now - self.stale_after_s)
            if self.retry_failed:
                retry = retry | ((t.c.status == "done") & (t.c.record_status == "failed"))
            with self.engine.begin() as c:
                res = c.execute(sa.update(t).where(t.c.suite == self.suite, t.c.run_key == key, retry)
                                .values(status="running", worker=self.worker, claimed_at=now,
                                        heartbeat_at=now, attempts=t.c.attempts + 1, epoch=None,
                                        val_acc=None, record=None, record_status=None))
            if res.rowcount != 1:
                return None
        self._held.add(key)
        return SqlClaim(self, key, spec.label)

    def active(self) -> list[dict[str, Any]]:
        now = time.time()
        return [{"worker": r.worker, "run": r.run_key, "epoch": r.epoch, "val_acc": r.val_acc}
                for r in self._rows()
                if r.status == "running" and (r.heartbeat_at or 0) >= now - self.stale_after_s]

    def rows(self) -> list[dict[str, Any]]:
        return [dict(r._mapping) for r in self._rows()]

    def records(self) -> list[RunRecord]:
        """Every finished run's record, whichever machine trained it."""
        return [RunRecord.from_dict(json.loads(r.record)) for r in self._rows()
                if r.status == "done" and r.record]

    def close(self) -> None:
        self._stop.set()
        self.engine.dispose()


def make_queue(out: str | Path, suite: str, *, storage: str | None = None,
               stale_after_s: float = 300.0, retry_failed: bool = False) -> FileQueue | SqlQueue:
    if storage:
        return SqlQueue(storage, suite, out=out, stale_after_s=stale_after_s,
                        retry_failed=retry_failed)
    return FileQueue(out, suite, retry_failed=retry_failed)
