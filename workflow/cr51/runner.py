"""``cr51-batch``: the scheduled (unattended) run of the pipeline, safe to start at any time.

Run it from the pipeline folder (where the ``Snakefile`` is). It

1. takes an exclusive, non-blocking ``flock`` on ``<results_dir>/.cr51-batch.lock`` (held until
   Snakemake has exited: the lock's file descriptor is passed to it);
2. checks that the results folder is writable and has free space, and that the drop folder
   exists (an unmounted share must not empty the result tables);
3. clears a stale Snakemake lock left by a killed run (``snakemake --unlock``);
4. runs ``snakemake --cores N --keep-going --rerun-incomplete --config KEY=VALUE ...``
   (an argument list, never a shell), its output going to ``<results_dir>/logs/runs/``;
5. makes sure the run has an audit record (``<results_dir>/audit.jsonl``) and prints one
   summary line.

Exit codes (documented in docs/operations.md): see the ``EXIT_*`` constants.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO

import yaml

from . import archive, audit
from .settings import with_defaults

EXIT_OK = 0  # the run completed (rejected and pending files are data, not failures)
EXIT_INBOX_SHRUNK = 65  # the drop folder lost most accepted plates (unmounted?): nothing was run
EXIT_NO_INPUT = 66  # the drop folder does not exist (not mounted?)
EXIT_FAILED = 70  # the pipeline failed (invalid config, a job failed, Snakemake killed)
EXIT_NOT_WRITABLE = 73  # the results folder cannot be created or written
EXIT_DISK_FULL = 74  # less free space in the results folder than --min-free-mb
EXIT_LOCKED = 75  # another cr51-batch run holds the lock: nothing was done, try later

LOCK_NAME = ".cr51-batch.lock"
PREFIX = "cr51 batch:"


class Stop(Exception):
    """The run stops before Snakemake starts: ``str(exc)`` is the message, ``code`` the exit code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Folders:
    """The folders a run works on, from config/config.yaml and the ``--config`` overrides, and the
    inbox guard's settings."""

    raw: Path
    results: Path
    min_share: float = 0.5
    confirm_cleanout: bool = False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cr51-batch",
        description="Scheduled run of the cr51 pipeline: lock, checks, Snakemake, audit "
        "record, one summary line. Run it from the pipeline folder. Exit codes: "
        f"{EXIT_OK} ok, {EXIT_INBOX_SHRUNK} drop folder lost most accepted plates, "
        f"{EXIT_NO_INPUT} drop folder missing, {EXIT_FAILED} pipeline failed, "
        f"{EXIT_NOT_WRITABLE} results folder not writable, {EXIT_DISK_FULL} disk full, "
        f"{EXIT_LOCKED} another run holds the lock.",
    )
    parser.add_argument("--cores", type=int, default=2, help="cores for Snakemake (default 2)")
    parser.add_argument(
        "--config",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides, passed to snakemake --config as given",
    )
    parser.add_argument(
        "--min-free-mb",
        type=float,
        default=100.0,
        help="refuse to run with less free space than this in the results folder (default 100)",
    )
    args = parser.parse_args(argv)
    bad = [item for item in args.config if "=" not in item or item.startswith("=")]
    if bad:
        parser.error(f"--config items must be KEY=VALUE: {', '.join(bad)}")
    if args.cores < 1:
        parser.error("--cores must be at least 1")
    if not Path("Snakefile").is_file():
        parser.error(f"no Snakefile in {os.getcwd()}: run cr51-batch from the pipeline folder")
    return args


def folders(overrides: list[str]) -> Folders:
    """The drop and results folders: ``--config`` overrides, else config/config.yaml."""
    with open("config/config.yaml", encoding="utf-8") as fh:
        config = yaml.safe_load(fh) or {}
    for item in overrides:
        key, _, value = item.partition("=")
        if key in ("raw_dir", "results_dir"):
            config[key] = value
        elif key in ("inbox_min_share", "confirm_cleanout"):
            config[key] = yaml.safe_load(value)  # as Snakemake reads --config values
    config = with_defaults(config)  # the schema's defaults for keys config.yaml leaves out
    return Folders(
        Path(config["raw_dir"]),
        Path(config["results_dir"]),
        float(config["inbox_min_share"]),
        config["confirm_cleanout"] is True,
    )


def acquire_lock(results: Path) -> IO[str]:
    """Create ``results`` if needed and take the run lock; the open lock file holds it."""
    try:
        results.mkdir(parents=True, exist_ok=True)
        lock = open(results / LOCK_NAME, "a", encoding="utf-8")
    except OSError as err:
        raise Stop(
            EXIT_NOT_WRITABLE, f"results folder {results} is not writable ({err.strerror}); nothing was run"
        ) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise Stop(EXIT_LOCKED, f"another run holds the lock on {results}; nothing was done") from None
    return lock


def check_folders(dirs: Folders, min_free_mb: float) -> None:
    """Raise :class:`Stop` if the results folder is not writable or full, or the drop folder is missing."""
    try:
        with tempfile.TemporaryFile(dir=dirs.results):
            pass
    except OSError as err:
        raise Stop(
            EXIT_NOT_WRITABLE, f"results folder {dirs.results} is not writable ({err.strerror}); nothing was run"
        ) from None
    free_mb = shutil.disk_usage(dirs.results).free / 1e6
    if free_mb < min_free_mb:
        raise Stop(
            EXIT_DISK_FULL,
            f"disk full: {free_mb:.0f} MB free in results folder {dirs.results}, "
            f"{min_free_mb:g} MB needed; nothing was run",
        )
    if not dirs.raw.is_dir():
        raise Stop(EXIT_NO_INPUT, f"drop folder {dirs.raw} not found (not mounted?); nothing was run")


def snakemake_command(args: argparse.Namespace, *extra: str) -> list[str]:
    """The Snakemake command line (an argument list: nothing goes through a shell)."""
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(args.cores), *extra]
    return cmd + (["--config", *args.config] if args.config else [])


def has_stale_lock() -> bool:
    """Whether Snakemake's lock folder holds locks (stale when we hold the run lock)."""
    locks = Path(".snakemake/locks")
    return locks.is_dir() and any(locks.iterdir())


def run_snakemake(cmd: list[str], log: IO[str], lock: IO[str], env: dict[str, str]) -> int:
    """Run ``cmd`` with output to ``log``; the run lock stays held while it runs."""
    log.write(f"$ {cmd!r}\n")
    log.flush()
    proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, pass_fds=(lock.fileno(),), check=False)
    return proc.returncode


def summary(results: Path, record: audit.Record, seconds: float) -> str:
    """The one-line summary of a completed run."""
    counts = record.get("files") or {}
    plates_ok = len({r["plate"] for r in audit.files_rows(results) or [] if r["status"] == "ok"})
    new = len({e["plate"] for e in record.get("new", []) if e["plate"]})
    replaced = len({e["plate"] for e in record.get("replaced", []) if e["plate"]})
    files = ", ".join(f"{counts.get(s, 0)} {s}" for s in audit.STATUSES)
    return (
        f"{PREFIX} {plates_ok} plates ok ({new} new, {replaced} replaced); files: {files}; "
        f"results in {results}; {seconds:.1f} s"
    )


def batch(args: argparse.Namespace, dirs: Folders, lock: IO[str], started: float) -> tuple[int, str]:
    """Checks, stale-lock recovery, the Snakemake run and its audit record: (exit code, summary)."""
    check_folders(dirs, args.min_free_mb)
    if message := archive.inbox_check(dirs.raw, dirs.results, dirs.min_share, dirs.confirm_cleanout):
        audit.append_record(
            dirs.results,
            audit.build_record(
                dirs.results, status="refused", start=started, config_hash=None, invoked_by="cr51-batch", note=message
            ),
        )
        raise Stop(EXIT_INBOX_SHRUNK, message)
    run_id = uuid.uuid4().hex
    env = {**os.environ, audit.RUN_ID_ENV: run_id}
    log_path = dirs.results / "logs" / "runs" / f"{datetime.now():%Y%m%dT%H%M%S}-{run_id[:8]}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    note = ""
    with open(log_path, "w", encoding="utf-8") as log:
        if has_stale_lock():
            run_snakemake(snakemake_command(args, "--unlock"), log, lock, env)
            note = "cleared a stale Snakemake lock left by an interrupted run"
            env[audit.NOTE_ENV] = note
        cmd = snakemake_command(args, "--keep-going", "--rerun-incomplete")
        code = run_snakemake(cmd, log, lock, env)
    status = "ok" if code == 0 else "failed"
    records = audit.read_records(dirs.results)
    record = next((r for r in reversed(records) if r.get("run_id") == run_id), None)
    if record is None:  # Snakemake had nothing to do, or stopped before its handlers ran
        record = audit.build_record(
            dirs.results,
            status=status,
            start=started,
            config_hash=None,
            invoked_by="cr51-batch",
            logs=[str(log_path.resolve())],
            note=note or ("nothing to do" if code == 0 else f"snakemake exited with {code}"),
        )
        audit.append_record(dirs.results, record)
    seconds = time.time() - started
    if code != 0:
        return EXIT_FAILED, f"{PREFIX} FAILED: the pipeline failed (exit {code}); see {log_path}; {seconds:.1f} s"
    return EXIT_OK, summary(dirs.results, record, seconds)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``cr51-batch``; prints one line and returns the exit code."""
    started = time.time()
    args = parse_args(argv)
    dirs = folders(args.config)
    try:
        lock = acquire_lock(dirs.results)
    except Stop as stop:
        print(f"{PREFIX} {stop}")
        return stop.code
    with lock:
        try:
            code, line = batch(args, dirs, lock, started)
        except Stop as stop:
            code, line = stop.code, f"{PREFIX} {stop}"
    print(line)
    return code


if __name__ == "__main__":
    sys.exit(main())
