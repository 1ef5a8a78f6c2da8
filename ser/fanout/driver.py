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
from typing import Any, Callable, Iterable, Iterator, Optional

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
    left by a dead launch on this host is taken over; one from another host is honoured until its file
    is removed by hand (the file names the host, process and launch)."""

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
        # One status of the whole pipeline (a couple of seconds); DVC re-collects the index per target.
        changed = {name for name in repo.status() if name in selected}
        cells = {n: Cell(n, stages[n].cmd if isinstance(stages[n].cmd, str) else " && ".join(stages[n].cmd),
                         stages[n].wdir) for n in selected}
    return Plan(changed, {n: upstream[n] & selected for n in selected}, cells)


def _replan(root: Path, targets: Optional[list[str]], attempts: int = 3) -> Plan:
    """plan() while jobs write their outputs: a file that vanishes under DVC's hashing (a stage swapping
    in its finished output) is an OSError worth one more try."""
    for attempt in range(attempts):
        try:
            return plan(root, targets)
        except OSError as exc:
            if attempt == attempts - 1:
                raise
            log.debug("asking DVC again (%s)", exc)
            time.sleep(1.0)
    raise AssertionError("unreachable")


def _while_locked(what: str, action: Callable[[], None], attempts: int = 30) -> None:
    """Run `action` (a DVC session that takes the repository lock), waiting while another launch holds it."""
    from dvc.lock import LockError

    for attempt in range(attempts):
        try:
            action()
            return
        except LockError:  # another launch is preparing or recording a cell
            time.sleep(1.0 + attempt * 0.5)
    raise FanoutError(f"could not {what}: the DVC repository stayed locked")


def _prepare(root: Path, stage: str) -> None:
    """What `dvc repro` does before a stage's command: remove its outputs that are not `persist`."""
    def remove_outs() -> None:
        with _repo(root) as repo, repo.lock:
            (target,) = [s for s in repo.index.stages if s.addressing == stage]
            target.remove_outs(ignore_remove=False, force=False)

    _while_locked(f"prepare {stage}", remove_outs)


def _record(root: Path, stages: list[str]) -> None:
    """What `dvc repro` does after a stage's command, for each stage: hash and cache its outputs, write its
    dvc.lock entry and save the run to the run cache. One DVC session for all of them."""
    todo = list(stages)

    def commit() -> None:
        with _repo(root) as repo:
            while todo:
                for st in repo.commit(todo[0], force=True):
                    try:
                        repo.stage_cache.save(st)
                    except Exception as exc:  # the run cache is an optimisation; dvc.lock is the record
                        log.debug("run cache not saved for %s: %s", todo[0], exc)
                todo.pop(0)

    _while_locked(f"record {', '.join(stages)}", commit)


# --------------------------------------------------------------------------- the loop
@dataclass
class CellRecord:
    """What happened to one cell in this launch; times in seconds."""

    stage: str
    attempts: int = 0
    job_ids: list[str] = field(default_factory=list)
    status: str = "pending"  # running, done, failed
    command_s: float = 0.0  # the stage command's own wall time (last attempt)
    job_s: float = 0.0  # submit to seen finished (last attempt)
    start_latency_s: float = 0.0  # submit to the command's start: scheduling and job start-up
    end_latency_s: float = 0.0  # the command's end to the driver seeing it: job tear-down and polling
    record_s: float = 0.0  # dvc commit, shared by the cells recorded together
    message: str = ""

    @property
    def overhead_s(self) -> float:
        return max(0.0, self.job_s - self.command_s)


@dataclass
class _Running:
    job: Job
    submitted: float  # time.time(): compared with the job's own clock readings


class _Launch:
    """One launch's state: the plan, the running jobs, the records, and the cells other launches hold."""

    def __init__(self, root: Path, engine: Engine, targets: Optional[list[str]], max_jobs: int, retries: int,
                 launch: str) -> None:
        self.root, self.engine, self.targets = root, engine, targets
        self.max_jobs, self.retries, self.launch = max_jobs, retries, launch
        self.records: dict[str, CellRecord] = {}
        self.running: dict[str, _Running] = {}
        self.failed: set[str] = set()
        self.elsewhere: set[str] = set()
        self.unrecorded: set[str] = set()  # finished well, not yet in dvc.lock
        # Locks stay held from submission until the cell is recorded or given up, retries included:
        # another launch must not find a finished cell unlocked before it is in dvc.lock.
        self.held: dict[str, CellLock] = {}
        self.current = plan(root, targets)

    def fill(self) -> None:
        """Submit ready cells up to max_jobs. Safe on a plan older than the last finished jobs: a ready
        cell's upstream stages were up to date, and finishing other cells does not change them."""
        busy = set(self.running) | self.failed | self.elsewhere | self.unrecorded
        for stage in self.current.ready(busy):
            if len(self.running) >= self.max_jobs or not self.engine.can_take():
                return
            rec = self.records.setdefault(stage, CellRecord(stage))
            if rec.status == "done":
                raise FanoutError(f"{stage} is still changed after it ran and was recorded: its command does "
                                  "not write what dvc.yaml declares, or its outputs are not deterministic")
            lock = self.held.get(stage) or CellLock(self.root, stage, self.launch)
            if stage not in self.held and not lock.acquire():
                holder = lock.holder()
                log.info("%s is running in another launch (%s on %s); waiting for it", stage,
                         holder.get("launch", "?"), holder.get("host", "?"))
                self.elsewhere.add(stage)
                continue
            self.held[stage] = lock
            try:
                _prepare(self.root, stage)
                job = self.engine.submit(self.current.cells[stage])
            except BaseException:
                self.release(stage)
                raise
            rec.attempts += 1
            rec.job_ids.append(job.job_id)
            rec.status = "running"
            self.running[stage] = _Running(job, time.time())
            log.info("%s: submitted as job %s (attempt %d)", stage, job.job_id, rec.attempts)

    def poll(self) -> list[str]:
        """Finished jobs: failures are retried or given up; successes wait in `unrecorded`."""
        finished = []
        for stage, run in list(self.running.items()):
            outcome: Optional[Outcome] = run.job.poll()
            if outcome is None:
                continue
            del self.running[stage]
            finished.append(stage)
            rec = self.records[stage]
            seen = time.time()
            rec.job_s = seen - run.submitted
            if outcome.ok:
                rec.command_s = outcome.seconds
                rec.start_latency_s = max(0.0, (outcome.started or run.submitted) - run.submitted)
                rec.end_latency_s = max(0.0, seen - (outcome.ended or seen))
                self.unrecorded.add(stage)
            elif rec.attempts <= self.retries:
                rec.status, rec.message = "pending", outcome.message
                log.warning("%s: job %s failed (attempt %d of %d), retrying:\n%s", stage, run.job.job_id,
                            rec.attempts, self.retries + 1, outcome.message)
            else:
                rec.status, rec.message = "failed", outcome.message
                self.failed.add(stage)
                self.release(stage)
                log.error("%s: job %s failed (attempt %d of %d); not recorded:\n%s", stage, run.job.job_id,
                          rec.attempts, self.retries + 1, outcome.message)
        return finished

    def record(self) -> None:
        """dvc commit of every cell that finished well, then a fresh plan from DVC."""
        stages = sorted(self.unrecorded)
        if stages:
            t0 = time.monotonic()
            _record(self.root, stages)
            seconds = time.monotonic() - t0
            for stage in stages:
                self.release(stage)
                rec = self.records[stage]
                rec.status, rec.record_s = "done", seconds / len(stages)
                log.info("%s: done in %.1f s (job %s; %.1f s outside the command; recorded in %.1f s)", stage,
                         rec.job_s, rec.job_ids[-1], rec.overhead_s, rec.record_s)
            self.unrecorded.clear()
        self.current = _replan(self.root, self.targets)

    def release(self, stage: str) -> None:
        lock = self.held.pop(stage, None)
        if lock is not None:
            lock.release()

    def cancel_all(self) -> None:
        for stage, run in self.running.items():
            log.warning("cancelling %s (job %s)", stage, run.job.job_id)
            run.job.cancel()
        for stage in list(self.held):
            self.release(stage)


def run_pending(root: Path, engine: Engine, *, targets: Optional[list[str]] = None, max_jobs: int = 2,
                retries: int = 2, poll_s: float = 1.0, launch: Optional[str] = None,
                report: Optional[Path] = None) -> dict[str, CellRecord]:
    """Run every pending stage (of `targets`) through `engine`, at most `max_jobs` at once; returns the
    record of each cell this launch ran or tried. Raises FanoutError when some cell failed."""
    root = Path(root).resolve()
    state = _Launch(root, engine, targets, max_jobs, retries,
                    launch or f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}")
    log.info("%d stage(s) to run through the %s engine, up to %d at once", len(state.current.changed),
             engine.name, max_jobs)
    started = time.monotonic()
    try:
        while True:
            still = {s for s in state.elsewhere if CellLock(root, s, state.launch).path.exists()}
            if still != state.elsewhere:  # another launch finished a cell: ask DVC again first
                state.elsewhere = still
                state.current = _replan(root, targets)
            state.fill()
            if not state.running and not state.elsewhere:
                break
            time.sleep(poll_s)
            if state.poll():
                state.fill()  # free slots first: recording and asking DVC take seconds
                state.record()
                done = sum(r.status == "done" for r in state.records.values())
                log.info("progress: %d done, %d running, %d failed, %d changed; %.0f s", done,
                         len(state.running), len(state.failed), len(state.current.changed),
                         time.monotonic() - started)
    except BaseException:
        state.cancel_all()
        raise
    finally:
        if report is not None:
            _write_report(report, engine.name, max_jobs, state.records, time.monotonic() - started)
    if state.failed:
        raise FanoutError("failed after retries, not recorded: " + ", ".join(sorted(state.failed)) +
                          "; their downstream stages did not run (see the job logs above)")
    return state.records


def _mean(values: list[float]) -> Optional[float]:
    return round(sum(values) / len(values), 3) if values else None


def _write_report(path: Path, engine: str, max_jobs: int, records: dict[str, CellRecord], seconds: float) -> None:
    done = [r for r in records.values() if r.status == "done"]
    doc = {"engine": engine, "max_jobs": max_jobs, "wall_s": round(seconds, 2),
           "cells": [{**asdict(r), "overhead_s": round(r.overhead_s, 3)} for r in records.values()],
           "mean_overhead_s": _mean([r.overhead_s for r in done]),
           "mean_start_latency_s": _mean([r.start_latency_s for r in done]),
           "mean_end_latency_s": _mean([r.end_latency_s for r in done]),
           "mean_record_s": _mean([r.record_s for r in done])}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
