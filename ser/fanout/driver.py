"""Run the pending stages of the DVC pipeline as jobs, in dependency order, and record them as
`dvc repro` would.

The driver asks DVC which stages are changed (`dvc status`), submits each one whose upstream stages
are all up to date as a job (ser.fanout.engines), and when a job succeeds records the stage with
`dvc commit` (dvc.lock, the cache, the run cache); then it asks DVC again, which releases the
stages downstream. A job that fails is retried; one that still fails is reported, is not recorded,
and its downstream stages are not started. Each running cell holds a lock file, so two launches
never run the same cell at once: the second waits and finds the cell recorded.
"""
from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from ser.errors import SerError
from ser.fanout.engines import Cell, Engine, Job, Outcome

__all__ = ["FanoutError", "CellLock", "Plan", "plan", "CellRecord", "run_pending"]

log = logging.getLogger(__name__)

LOCK_DIR = Path(".dvc/tmp/fanout/locks")


class FanoutError(SerError):
    """The pipeline cannot be fanned out as asked (unknown target, a cell locked by a live launch...)."""


# --------------------------------------------------------------------------- locks
class CellLock:
    """`.dvc/tmp/fanout/locks/<stage>.lock`, created exclusively, naming the launch that holds it. A lock
    left by a dead launch on this host is taken over; one from another host is honoured until removed
    (`ser fanout --break-locks`)."""

    def __init__(self, root: Path, stage: str, launch: str) -> None:
        self.path = Path(root) / LOCK_DIR / f"{stage}.lock"
        self.stage, self.launch = stage, launch

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._stale():
                    return False
                log.warning("%s: taking over the lock of a launch that is no longer running", self.stage)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump({"host": socket.gethostname(), "pid": os.getpid(), "launch": self.launch,
                           "since": time.strftime("%Y-%m-%dT%H:%M:%S")}, fh)
            return True
        return False

    def holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def _stale(self) -> bool:
        info = self.holder()
        if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
            return False
        try:
            os.kill(info["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def release(self) -> None:
        if self.holder().get("launch") == self.launch:
            self.path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the plan
@dataclass
class Plan:
    """What DVC says now: the changed stages among the selected ones, and each stage's upstream stages."""

    changed: set[str]
    upstream: dict[str, set[str]]
    cells: dict[str, Cell]

    def ready(self, busy: Iterable[str]) -> list[str]:
        """Changed stages none of whose upstream stages is changed, busy (running elsewhere) or failed."""
        blocked = self.changed | set(busy)
        return sorted(s for s in self.changed if s not in busy and not (self.upstream[s] & blocked))


@contextlib.contextmanager
def _repo(root: Path) -> Iterator[Any]:
    """The DVC repository at root, entered from root: DVC names stages relative to the working directory."""
    from dvc.repo import Repo  # dvc's import is heavy; `ser predict` and `ser report` do not need it

    old = os.getcwd()
    os.chdir(root)
    try:
        repo = Repo(str(root))
        try:
            yield repo
        finally:
            repo.close()
    finally:
        os.chdir(old)


def plan(root: Path, targets: Optional[list[str]] = None) -> Plan:
    """The pending stages: `targets` (stage names or fnmatch patterns, e.g. 'train@dann-*') and their
    upstream stages, or every stage."""
    import networkx as nx

    with _repo(root) as repo:
        graph = repo.index.graph
        stages = {s.addressing: s for s in repo.index.stages if s.cmd}
        upstream = {name: {u.addressing for u in nx.descendants(graph, st) if u.addressing in stages}
                    for name, st in stages.items()}
        selected = set(stages)
        if targets:
            picked = {n for n in stages if any(fnmatch.fnmatchcase(n, t) for t in targets)}
            unknown = [t for t in targets if not any(fnmatch.fnmatchcase(n, t) for n in stages)]
            if unknown:
                raise FanoutError(f"no stage matches {', '.join(unknown)}; stages look like "
                                  f"{', '.join(sorted(stages)[:4])}, ...")
            selected = picked | {u for n in picked for u in upstream[n]}
        changed = {name for name in repo.status(targets=sorted(selected)) if name in selected}
        cells = {n: Cell(n, stages[n].cmd if isinstance(stages[n].cmd, str) else " && ".join(stages[n].cmd),
                         stages[n].wdir) for n in selected}
    return Plan(changed, {n: upstream[n] & selected for n in selected}, cells)


def _prepare(root: Path, stage: str) -> None:
    """What `dvc repro` does before a stage's command: remove its outputs that are not `persist`."""
    with _repo(root) as repo, repo.lock:
        (target,) = [s for s in repo.index.stages if s.addressing == stage]
        target.remove_outs(ignore_remove=False, force=False)


def _record(root: Path, stage: str, attempts: int = 30) -> None:
    """What `dvc repro` does after a stage's command: hash and cache its outputs, write its dvc.lock
    entry and save the run to the run cache."""
    from dvc.lock import LockError

    for attempt in range(attempts):
        try:
            with _repo(root) as repo:
                for st in repo.commit(stage, force=True):
                    try:
                        repo.stage_cache.save(st)
                    except Exception as exc:  # the run cache is an optimisation; dvc.lock is the record
                        log.debug("run cache not saved for %s: %s", stage, exc)
            return
        except LockError:  # another launch is writing dvc.lock
            time.sleep(1.0 + attempt * 0.5)
    raise FanoutError(f"could not record {stage}: the DVC repository stayed locked")


# --------------------------------------------------------------------------- the loop
@dataclass
class CellRecord:
    stage: str
    attempts: int = 0
    job_ids: list[str] = field(default_factory=list)
    status: str = "pending"  # running, done, failed
    command_s: float = 0.0
    job_s: float = 0.0  # submit to seen finished, last attempt
    record_s: float = 0.0  # dvc commit
    message: str = ""

    @property
    def overhead_s(self) -> float:
        return max(0.0, self.job_s - self.command_s)


@dataclass
class _Running:
    job: Job
    lock: CellLock
    submitted: float


def run_pending(root: Path, engine: Engine, *, targets: Optional[list[str]] = None, max_jobs: int = 2,
                retries: int = 2, poll_s: float = 1.0, launch: Optional[str] = None,
                report: Optional[Path] = None) -> dict[str, CellRecord]:
    """Run every pending stage (of `targets`) through `engine`, at most `max_jobs` at once; returns the
    record of each cell this launch ran or tried. Raises FanoutError when some cell failed."""
    root = Path(root).resolve()
    launch = launch or f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
    records: dict[str, CellRecord] = {}
    running: dict[str, _Running] = {}
    failed: set[str] = set()
    elsewhere: set[str] = set()
    current = plan(root, targets)
    total = len(current.changed)
    log.info("%d stage(s) to run through the %s engine, up to %d at once", total, engine.name, max_jobs)
    started = time.monotonic()
    try:
        while True:
            still = {s for s in elsewhere if CellLock(root, s, launch).path.exists()}
            if still != elsewhere:  # another launch finished a cell: ask DVC again before anything else
                elsewhere, current = still, plan(root, targets)
            busy = set(running) | failed | elsewhere
            for stage in current.ready(busy):
                if len(running) >= max_jobs or not getattr(engine, "can_take", lambda: True)():
                    break
                if records.get(stage) and records[stage].status == "done":
                    raise FanoutError(f"{stage} is still changed after it ran and was recorded: its command "
                                      "does not write what dvc.yaml declares, or its outputs are not deterministic")
                lock = CellLock(root, stage, launch)
                if not lock.acquire():
                    holder = lock.holder()
                    log.info("%s is running in another launch (%s on %s); waiting for it", stage,
                             holder.get("launch", "?"), holder.get("host", "?"))
                    elsewhere.add(stage)
                    continue
                rec = records.setdefault(stage, CellRecord(stage))
                try:
                    _prepare(root, stage)
                    job = engine.submit(current.cells[stage])
                except BaseException:
                    lock.release()
                    raise
                rec.attempts += 1
                rec.job_ids.append(job.job_id)
                rec.status = "running"
                running[stage] = _Running(job, lock, time.monotonic())
                log.info("%s: submitted as job %s (attempt %d)", stage, job.job_id, rec.attempts)
            if not running and not elsewhere:
                break
            time.sleep(poll_s)
            finished = _collect(running, records, failed, root, retries)
            if finished:
                current = plan(root, targets)
                done = sum(r.status == "done" for r in records.values())
                log.info("progress: %d done, %d running, %d failed, %d changed; %.0f s",
                         done, len(running), len(failed), len(current.changed), time.monotonic() - started)
    except BaseException:
        for stage, run in running.items():
            log.warning("cancelling %s (job %s)", stage, run.job.job_id)
            run.job.cancel()
            run.lock.release()
        raise
    finally:
        if report is not None:
            _write_report(report, engine.name, max_jobs, records, time.monotonic() - started)
    if failed:
        raise FanoutError("failed after retries, not recorded: " + ", ".join(sorted(failed)) +
                          "; their downstream stages did not run (see the job logs above)")
    return records


def _collect(running: dict[str, _Running], records: dict[str, CellRecord], failed: set[str], root: Path,
             retries: int) -> list[str]:
    finished = []
    for stage in list(running):
        run = running[stage]
        outcome: Optional[Outcome] = run.job.poll()
        if outcome is None:
            continue
        del running[stage]
        finished.append(stage)
        rec = records[stage]
        rec.job_s = time.monotonic() - run.submitted
        try:
            if outcome.ok:
                t0 = time.monotonic()
                _record(root, stage)
                rec.record_s = time.monotonic() - t0
                rec.command_s, rec.status = outcome.seconds, "done"
                log.info("%s: done in %.1f s (job %s; %.1f s outside the command; recorded in %.1f s)", stage,
                         rec.job_s, run.job.job_id, rec.overhead_s, rec.record_s)
            elif rec.attempts <= retries:
                rec.status, rec.message = "pending", outcome.message
                log.warning("%s: job %s failed (attempt %d of %d), retrying:\n%s", stage, run.job.job_id,
                            rec.attempts, retries + 1, outcome.message)
            else:
                rec.status, rec.message = "failed", outcome.message
                failed.add(stage)
                log.error("%s: job %s failed (attempt %d of %d); not recorded:\n%s", stage, run.job.job_id,
                          rec.attempts, retries + 1, outcome.message)
        finally:
            run.lock.release()
    return finished


def _write_report(path: Path, engine: str, max_jobs: int, records: dict[str, CellRecord], seconds: float) -> None:
    done = [r for r in records.values() if r.status == "done"]
    doc = {"engine": engine, "max_jobs": max_jobs, "wall_s": round(seconds, 2),
           "cells": [{**asdict(r), "overhead_s": round(r.overhead_s, 3)} for r in records.values()],
           "mean_overhead_s": round(sum(r.overhead_s for r in done) / len(done), 3) if done else None,
           "mean_record_s": round(sum(r.record_s for r in done) / len(done), 3) if done else None}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
