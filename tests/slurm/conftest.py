"""A real single-node SLURM for the tests: munged, slurmctld and slurmd started here, stopped by pid.

Needs root and apt (Debian 12: SLURM 22.05). Installs munge and SLURM when missing, writes
/etc/slurm/slurm.conf (jobs read it there: SLURM_CONF does not reach them) with a node taken from
``slurmd -C`` and two fake GPUs (character devices) so GPU jobs schedule, and keeps state, spool and
logs in a temporary folder. No cgroups, no accounting daemon: status queries use squeue.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

PACKAGES = ["munge", "slurmctld", "slurmd", "slurm-client"]
MARK = "# written by cryopipe tests/slurm/conftest.py"
ETC = Path("/etc/slurm")
GPUS = 2


def _run(*cmd: str, timeout: float = 300, env: dict | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout


def _install() -> None:
    if all(shutil.which(b) for b in ("munged", "slurmctld", "slurmd", "sbatch")):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run("apt-get", "update", "-q", env=env)  # lists may be missing or stale on a fresh machine
    _run("apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES, env=env)


def _wait(what: str, ready, timeout: float = 60, procs=()) -> None:
    end = time.monotonic() + timeout
    while not ready():
        dead = [p.args[0] for p in procs if p.poll() is not None]
        if dead or time.monotonic() > end:
            raise RuntimeError(f"live SLURM: {what} not ready ({'exited: ' + ', '.join(dead) if dead else 'timeout'})")
        time.sleep(0.2)


def _slurm_conf(work: Path, host: str) -> str:
    node = dict(kv.split("=", 1) for kv in _run("slurmd", "-C").splitlines()[0].split())
    node.update(NodeName=host, NodeAddr="127.0.0.1", RealMemory=str(int(int(node["RealMemory"]) * 0.9)),
                Gres=f"gpu:{GPUS}", State="UNKNOWN")
    node.pop("UpTime", None)
    return f"""{MARK}
ClusterName=cryopipe-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=pmi2
EnforcePartLimits=ALL
GresTypes=gpu
ReturnToService=2
MinJobAge=300
SchedulerParameters=sched_interval=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
StateSaveLocation={work}/state
SlurmdSpoolDir={work}/spool
SlurmctldPidFile={work}/slurmctld.pid
SlurmdPidFile={work}/slurmd.pid
SlurmctldLogFile={work}/slurmctld.log
SlurmdLogFile={work}/slurmd.log
{" ".join(f"{k}={v}" for k, v in node.items())}
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _sinfo_state() -> str:
    return subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True).stdout.strip()


def _jobs() -> list[str]:
    return subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()


def _start(work: Path, procs: list[subprocess.Popen]) -> None:
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs.append(subprocess.Popen(["munged", "--foreground", "--force"], user="munge", group="munge", **quiet))
    _wait("munged", lambda: subprocess.run(["munge", "-n"], capture_output=True).returncode == 0, procs=procs)
    procs.append(subprocess.Popen(["slurmctld", "-D", "-i"], **quiet))
    procs.append(subprocess.Popen(["slurmd", "-D"], **quiet))
    try:
        _wait("node", lambda: _sinfo_state() == "idle", procs=procs)
    except RuntimeError as exc:
        logs = [(work / f).read_text()[-1500:] for f in ("slurmctld.log", "slurmd.log") if (work / f).exists()]
        raise RuntimeError("\n".join([str(exc), *logs])) from exc


@pytest.fixture(scope="session")
def live_slurm(tmp_path_factory):
    """Start munged, slurmctld and slurmd and wait for an idle node; afterwards cancel jobs and stop them."""
    if os.geteuid() != 0:
        pytest.skip("a live SLURM needs root (it installs packages and writes /etc/slurm)")
    if shutil.which("apt-get") is None:
        pytest.skip("a live SLURM needs apt-get to install munge and SLURM")
    conf = ETC / "slurm.conf"
    if conf.exists() and MARK not in conf.read_text():
        pytest.skip(f"{conf} exists and was not written by these tests: not touching a real cluster")
    _install()
    work = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "gpu"):
        (work / sub).mkdir()
    for k in range(GPUS):  # fake GPUs: character devices (/dev/null's numbers) for gres.conf File=
        os.mknod(work / "gpu" / f"nvidia{k}", 0o666 | 0o020000, os.makedev(1, 3))
    host = socket.gethostname().split(".")[0]
    ETC.mkdir(exist_ok=True)
    conf.write_text(_slurm_conf(work, host))
    (ETC / "gres.conf").write_text(f"{MARK}\nNodeName={host} Name=gpu File={work}/gpu/nvidia[0-{GPUS - 1}]\n")
    for d in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
        os.makedirs(d, exist_ok=True)
        shutil.chown(d, "munge", "munge")
    if not Path("/etc/munge/munge.key").exists():
        _run("mungekey", "--create")
        shutil.chown("/etc/munge/munge.key", "munge", "munge")
    procs: list[subprocess.Popen] = []
    try:
        _start(work, procs)
        yield
    finally:
        if procs and (jobs := _jobs()):
            subprocess.run(["scancel", *jobs], capture_output=True)
            with contextlib.suppress(RuntimeError):
                _wait("job cancellation", lambda: not _jobs(), timeout=20)
        for proc in reversed(procs):
            _stop(proc)
        for name in ("slurm.conf", "gres.conf"):
            (ETC / name).unlink(missing_ok=True)
