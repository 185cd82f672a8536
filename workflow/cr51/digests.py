"""Digests, in one place: of a file, of a plate's files, of the package's code and of the software a
result was computed with. Standard library only (the Snakefile uses it at parse time).

The *software* of a result is the package's source code plus the versions of Python and of every
library the package computes with (:data:`LIBRARIES`): the plate cache, the batch jobs' rerun
parameter and the header of every stored intermediate carry it, so that ``pip install -U lmfit``
recomputes everything instead of mixing numbers of two library versions.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
from importlib import metadata
from pathlib import Path

#: The package's runtime dependencies (pyproject.toml) except the workflow engine (snakemake and its
#: SLURM plugin schedule jobs; they compute nothing): a new version of any of these reruns every plate.
LIBRARIES = ("numpy", "pandas", "scipy", "lmfit", "wellmap", "openpyxl", "matplotlib", "jsonschema", "pyyaml")


def file_digest(path: str | os.PathLike) -> tuple[str, int]:
    """sha256 (hex) and size in bytes of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def stat_identity(st: os.stat_result) -> list[int]:
    """Device, inode, size, modification and change time (ns) of a file: any write changes one of them
    (the change time moves with every write and cannot be set back by a user: ``touch``, ``cp -p`` and
    ``rsync -t`` set the modification time only)."""
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


#: {path: (stat identity, sha256)} of the files :func:`result_digest` hashed in this process.
_RESULT_DIGESTS: dict[str, tuple[list[int], str]] = {}


def result_digest(path: str | os.PathLike) -> str | None:
    """sha256 of a result file, ``None`` if it cannot be read; remembered for this process by the
    file's stat identity (device, inode, size, modification and change time in ns), so that the
    results manifest and the audit record of a run hash its 250 MB of tables (10,000 plates) once."""
    key = os.fspath(path)
    try:
        identity = stat_identity(os.stat(key))
        known = _RESULT_DIGESTS.get(key)
        if known is not None and known[0] == identity:
            return known[1]
        sha = file_digest(key)[0]
    except OSError:
        return None
    _RESULT_DIGESTS[key] = (identity, sha)
    return sha


#: {path: (stat identity, rows)} of the CSV files :func:`csv_rows` read in this process.
_CSV_ROWS: dict[str, tuple[list[int], list[dict[str, str]]]] = {}


def csv_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a CSV file as ``csv.DictReader`` gives them, remembered for this process by the
    file's stat identity (:func:`stat_identity`): the audit record and the summary line of a run read
    ``files.csv`` (20,000 rows at 10,000 plates) once. The rows are shared: do not change them.
    ``OSError``, ``csv.Error`` or ``UnicodeDecodeError`` when the file cannot be read as CSV."""
    import csv

    key = os.fspath(path)
    identity = stat_identity(os.stat(key))
    known = _CSV_ROWS.get(key)
    if known is not None and known[0] == identity:
        return known[1]
    with open(key, encoding="utf-8", newline="") as fh:
        cells = list(csv.reader(fh))
    header, body = (cells[0], cells[1:]) if cells else ([], [])
    n = len(header)
    if all(len(r) == n for r in body):  # as DictReader reads a well-formed table, about twice as fast
        rows = [dict(zip(header, r)) for r in body]
    else:  # blank or ragged rows: DictReader's own rules
        with open(key, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
    if stat_identity(os.stat(key)) == identity:  # not rewritten while it was read
        _CSV_ROWS[key] = (identity, rows)
    return rows


def content_digest(paths: list[str], max_bytes: int) -> str:
    """sha256 of the files' paths, sizes and bytes (a file over ``max_bytes``: its size and mtime only).

    Given to the plate's batch job as a parameter, so that new content reruns the batch even when
    the file's modification time did not move (a re-export copied with ``cp -p`` or ``rsync -t``).
    """
    h = hashlib.sha256()
    for path in paths:
        st = os.stat(path)
        h.update(f"{path}\n{st.st_size}\n".encode("utf-8", "surrogateescape"))
        if st.st_size <= max_bytes:
            with open(path, "rb") as fh:
                h.update(fh.read())
        else:
            h.update(str(st.st_mtime_ns).encode())
    return h.hexdigest()


def code_digest() -> str:
    """sha256 of the ``cr51`` package's source files (every ``.py``, and the report's style and script)."""
    h = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".css", ".js") and p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@functools.cache
def library_versions() -> dict[str, str]:
    """{"python": version, library: version} for Python and every library in :data:`LIBRARIES`."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@functools.cache
def software() -> dict[str, object]:
    """What a result was computed with: the code digest and the library versions."""
    return {"code": code_digest(), "libraries": library_versions()}


def software_digest() -> str:
    """sha256 of :func:`software` (the batch jobs' rerun parameter, part of the plate-cache key)."""
    return hashlib.sha256(json.dumps(software(), sort_keys=True).encode()).hexdigest()
