"""The pipeline on a real single-node SLURM through profiles/slurm (snakemake-executor-plugin-slurm).

Starts munged (unless one already answers), slurmctld and slurmd as background processes with a
config written for this host (tests/slurm/slurm.conf.in) and stops them by PID afterwards. The config
must be /etc/slurm/slurm.conf: the plugin's in-job srun drops SLURM_CONF. An existing one is moved
aside and put back; state, logs and pid files go to a temp dir and the daemons use free ports, so
a SLURM already on this host keeps running. Needs root and the Debian packages slurmctld slurmd
slurm-client munge (tools/setup-system.sh).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from string import Template

import numpy as np
import pytest
from batchkit import result_tables

from cr51.scan import batch_of
from cr51.simulate import simulate_plate, write_plate

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SEARCH_PATH = f"{BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
COMMANDS = ["munge", "munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel"]
TEMPLATE = REPO / "tests/slurm/slurm.conf.in"
CONF = Path("/etc/slurm/slurm.conf")
CONF_BACKUP = CONF.with_name("slurm.conf.before-cr51-test")
LOCK = Path("/tmp/cr51-test-slurm.lock")  # one test cluster at a time on this host
PLATES = ["plate1", "plate2", "plate3"]
RUN_SECONDS = 300


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to start munged, slurmctld and slurmd"
    missing = [c for c in COMMANDS if shutil.which(c, path=SEARCH_PATH) is None]
    if missing:
        return f"SLURM/munge not installed ({', '.join(missing)} missing): run tools/setup-system.sh as root"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def memory_mb() -> int:
    """Node memory to declare: below the free memory, as slurmd refuses a node with less than declared."""
    free = subprocess.run(["free", "-m"], capture_output=True, text=True, timeout=10, check=True).stdout
    return int(free.splitlines()[1].split()[3]) * 9 // 10


def succeeds(env: dict[str, str], *cmd: str) -> bool:
    return subprocess.run(cmd, env=env, capture_output=True, timeout=10).returncode == 0


def wait_until(ready: Callable[[], bool], what: str, logs: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(logs.glob("*.log")))
            pytest.fail(f"{what} not ready after {seconds} s\n{tails}")
        time.sleep(0.2)


@contextmanager
def exclusive(lock: Path, seconds: float = 150) -> Iterator[None]:
    with lock.open("w") as held:
        deadline = time.monotonic() + seconds
        while True:
            try:
                fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another test cluster held {lock} for {seconds} s")
                time.sleep(1)
        yield


@contextmanager
def installed(text: str) -> Iterator[None]:
    """/etc/slurm/slurm.conf = text; a config that is not ours is moved aside and put back."""
    ours = "\n".join(TEMPLATE.read_text().splitlines()[:2])
    if CONF.exists() and not CONF.read_text().startswith(ours):
        CONF.rename(CONF_BACKUP)
    CONF.parent.mkdir(parents=True, exist_ok=True)
    CONF.write_text(text)
    try:
        yield
    finally:
        CONF.unlink()
        if CONF_BACKUP.exists():
            CONF_BACKUP.rename(CONF)


@contextmanager
def running(cmd: list[str], log: Path, env: dict[str, str], **kwargs) -> Iterator[None]:
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, **kwargs)
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A running single-node SLURM; yields the environment to reach it with (venv first on PATH)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm")
    host = socket.gethostname().split(".")[0]
    conf = Template(TEMPLATE.read_text()).substitute(
        host=host,
        cpus=len(os.sched_getaffinity(0)),  # = nproc
        memory_mb=memory_mb(),
        dir=state,
        ctld_port=free_port(),
        slurmd_port=free_port(),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")} | {"PATH": SEARCH_PATH}
    with ExitStack() as stack:  # undone in reverse: cancel jobs, stop daemons, restore config, unlock
        stack.enter_context(exclusive(LOCK))
        stack.enter_context(installed(conf))
        if not succeeds(env, "munge", "-n"):  # no munged answers: start one (the package made the key)
            run = Path("/run/munge")
            run.mkdir(parents=True, exist_ok=True)
            shutil.chown(run, "munge", "munge")
            munged = ["munged", "--foreground"]
            as_munge = {"user": "munge", "group": "munge", "extra_groups": []}
            stack.enter_context(running(munged, state / "munged.log", env, **as_munge))
            wait_until(lambda: succeeds(env, "munge", "-n"), "munged", state)
        stack.enter_context(running(["slurmctld", "-D"], state / "slurmctld.out.log", env))
        stack.enter_context(running(["slurmd", "-D"], state / "slurmd.out.log", env))
        stack.callback(subprocess.run, ["scancel", "--user", "root"], env=env, timeout=10)
        wait_until(lambda: succeeds(env, "sh", "-c", "sinfo -h -o %T | grep -qx idle"), "SLURM node", state)
        yield env


def snakemake(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    # Once jobs run, Snakemake ignores SIGTERM: only SIGKILL bounds a run.
    cmd = ["timeout", "-s", "KILL", str(RUN_SECONDS), str(BIN / "snakemake"), *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_SECONDS + 30)


def slurm_job_ids(log: Path) -> list[str]:
    return re.findall(r"SLURM_JOB_ID=(\d+)", log.read_text())


def test_batches_run_as_slurm_jobs_and_match_a_local_run(slurm, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for seed, name in enumerate(PLATES):
        write_plate(raw, simulate_plate(name, np.random.default_rng(seed)), "well_list")
    assert {batch_of(name, 2) for name in PLATES} == {"b000", "b001"}  # two batches: two cluster jobs
    config = ["--config", f"raw_dir={raw}", "settle_seconds=0", "batch_count=2"]
    on_slurm, local = tmp_path / "slurm", tmp_path / "local"

    run = snakemake(slurm, "--profile", "profiles/slurm", *config, f"results_dir={on_slurm}")
    assert run.returncode == 0, run.stderr[-3000:]

    # Each batch ran as its own job of this SLURM (its log records the job id); collect ran locally.
    ids = {log.stem: slurm_job_ids(log) for log in (on_slurm / "logs/batches").glob("*.log")}
    assert sorted(ids) == ["b000", "b001"] and all(len(found) == 1 for found in ids.values()), ids
    job_ids = {found[0] for found in ids.values()}
    assert len(job_ids) == 2, ids
    jobs = subprocess.run(
        ["squeue", "--states=all", "-h", "-o", "%i %T"], env=slurm, capture_output=True, text=True, timeout=10
    ).stdout.splitlines()
    assert {f"{job_id} COMPLETED" for job_id in job_ids} <= set(jobs), jobs
    assert not slurm_job_ids(on_slurm / "logs/collect.log")

    run = snakemake(slurm, "--cores", "2", *config, f"results_dir={local}")
    assert run.returncode == 0, run.stderr[-3000:]
    assert not slurm_job_ids(local / "logs/batches/b000.log")
    tables = sorted(p.name for p in local.glob("*.csv"))
    assert "potency_combined.csv" in tables
    assert sorted(p.name for p in on_slurm.glob("*.csv")) == tables
    assert result_tables(on_slurm) == result_tables(local)  # plate_history times: when each folder accepted
