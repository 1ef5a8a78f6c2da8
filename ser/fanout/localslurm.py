"""A one-node SLURM cluster on 127.0.0.1, in a folder of its own: to try `ser fanout --engine slurm`
without a cluster, and for its tests. Needs Debian's `slurm-wlm` and `munge` packages and root (slurmd
starts jobs as their user); it touches no system file: its munge key, socket, state and logs live in
the folder, and SLURM_CONF points the SLURM commands at it.

    python -m ser.fanout.localslurm start /tmp/slurm --cpus 2   # prints: export SLURM_CONF=...
    python -m ser.fanout.localslurm stop /tmp/slurm
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from ser.errors import SerError

__all__ = ["LocalSlurm", "SlurmUnavailable", "available"]

log = logging.getLogger(__name__)

_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel")

_CONF = """ClusterName=serlocal
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
AuthInfo=socket={folder}/munge.sock
CredType=cred/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
MinJobAge=300
NodeName=localhost CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


class SlurmUnavailable(SerError):
    """SLURM or munge is not installed, or this user cannot start them."""


def available() -> Optional[str]:
    """None when a local cluster can start here, else why not."""
    missing = [b for b in _BINARIES if shutil.which(b) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (Debian: apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs"
    return None


class LocalSlurm:
    """munged, slurmctld and slurmd for one node with `cpus` CPUs; `env` holds SLURM_CONF."""

    def __init__(self, folder: Path, cpus: int = 2, mem_mb: int = 4000, ctld_port: int = 6817,
                 d_port: int = 6818) -> None:
        self.folder = Path(folder).resolve()
        self.conf = self.folder / "slurm.conf"
        self.cpus, self.mem_mb, self.ctld_port, self.d_port = cpus, mem_mb, ctld_port, d_port

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def start(self, timeout: float = 60) -> "LocalSlurm":
        why = available()
        if why:
            raise SlurmUnavailable(why)
        for sub in ("state", "spool"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        key = self.folder / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o400)
        self.conf.write_text(_CONF.format(folder=self.folder, cpus=self.cpus, mem_mb=self.mem_mb,
                                          ctld_port=self.ctld_port, d_port=self.d_port))
        env = {**os.environ, **self.env}
        f = self.folder
        self._run(["munged", "-f", f"--key-file={key}", f"--socket={f}/munge.sock", f"--pid-file={f}/munged.pid",
                   f"--log-file={f}/munged.log", f"--seed-file={f}/munged.seed"], env)
        self._run(["slurmctld", "-f", str(self.conf)], env)
        self._run(["slurmd", "-f", str(self.conf)], env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env)
            if out.returncode == 0 and out.stdout.strip() in ("idle", "mixed", "allocated"):
                log.info("local SLURM up: 1 node, %d CPUs (SLURM_CONF=%s)", self.cpus, self.conf)
                return self
            time.sleep(0.5)
        self.stop()
        raise SlurmUnavailable(f"the local SLURM did not come up in {timeout:.0f} s; see {self.folder}/*.log")

    def _run(self, cmd: list[str], env: dict[str, str]) -> None:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            self.stop()
            raise SlurmUnavailable(f"{cmd[0]} did not start: {proc.stderr.strip()[-500:]}")

    def stop(self) -> None:
        """Cancel every job and stop the daemons (slurmd, slurmctld, munged)."""
        if self.conf.exists():
            subprocess.run(["scancel", "-u", "root"], capture_output=True, env={**os.environ, **self.env})
        for name in ("slurmd", "slurmctld", "munged"):
            pid_file = self.folder / f"{name}.pid"
            try:
                pid = int(pid_file.read_text().strip())
                os.kill(pid, signal.SIGTERM)
            except (OSError, ValueError):
                continue
            for _ in range(50):
                try:
                    os.kill(pid, 0)
                except OSError:
                    break
                time.sleep(0.1)

    def __enter__(self) -> "LocalSlurm":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ser.fanout.localslurm", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cluster = LocalSlurm(args.folder, cpus=args.cpus)
    try:
        if args.action == "start":
            cluster.start()
            sys.stdout.write(f"export SLURM_CONF={cluster.conf}\n")
        else:
            cluster.stop()
    except SerError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
