"""Intermediate files between the pipeline's jobs and runs (plate cache entries, batch outputs), each
with a header checked on read. Standard library only.

A stored file is one JSON header line, then the payload bytes::

    {"kind": "cr51-plate", "format": 3, "name": "<key>.jsonl", "software": {...}, "bytes": 1234, "sha256": "..."}\\n<payload>

:func:`read` returns the payload only when the header is there, names the expected kind and format,
names the file itself (a cache entry's name is its key: an intact file copied over another one, a
misdirected write, is not taken for another plate's results), was written by the same software
(:func:`cr51.digests.software`: code digest, Python and library versions) and the payload has the
recorded size and sha256; otherwise it raises :class:`StaleFile` with the reason, and the caller
recomputes. A damaged, truncated, misplaced, foreign or old file is therefore never used.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .digests import result_digest, software, stat_identity

#: The longest header read (a header is a few hundred bytes; a file without a newline soon is not ours).
MAX_HEADER = 1 << 16


class StaleFile(Exception):
    """A stored file that cannot be used; ``str(exc)`` says why."""


def header(kind: str, fmt: int, payload: bytes, name: str) -> dict[str, object]:
    """The header :func:`write` puts before ``payload`` in the file called ``name``."""
    return {
        "kind": kind,
        "format": fmt,
        "name": name,
        "software": software(),
        "bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }


def write(path: str | os.PathLike, kind: str, fmt: int, payload: bytes) -> None:
    """Write header + ``payload`` atomically (a temporary file in the same folder, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(header(kind, fmt, payload, path.name), sort_keys=True).encode() + b"\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(line)
            fh.write(payload)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read(path: str | os.PathLike, kind: str, fmt: int, name: str | None = None) -> bytes:
    """The payload of a file :func:`write` wrote; :class:`StaleFile` (with the reason) otherwise.
    ``name``: the name the file was written under, when ``path`` is a hard link to it by another name."""
    try:
        with open(path, "rb") as fh:
            head = _header(fh.readline(MAX_HEADER), path, kind, fmt, name)
            size = head.get("bytes")
            left = os.fstat(fh.fileno()).st_size - fh.tell()
            # the rest read into one buffer (not sliced out of the whole file: a batch file is ~65 MB)
            payload = fh.read() if size == left else b""
    except OSError as err:
        raise StaleFile(f"cannot be read ({err.strerror or err})") from None
    if size != len(payload) or head.get("sha256") != hashlib.sha256(payload).hexdigest():
        raise StaleFile("is damaged or truncated (checksum mismatch)")
    return payload


def _header(line: bytes, path: str | os.PathLike, kind: str, fmt: int, name: str | None) -> dict:
    """The checked header line of a stored file (:func:`read`); :class:`StaleFile` otherwise."""
    if not line.endswith(b"\n"):
        raise StaleFile("has no header")
    try:
        head = json.loads(line)
    except ValueError:
        raise StaleFile("has a damaged header") from None
    if not isinstance(head, dict) or head.get("kind") != kind:
        raise StaleFile(f"is not a {kind} file")
    if head.get("format") != fmt:
        raise StaleFile(f"has format {head.get('format')!r}, this software reads {fmt}")
    if head.get("software") != software():
        raise StaleFile("was written by other software (code or library versions differ)")
    if head.get("name") != (name or Path(path).name):
        raise StaleFile(f"holds the data of another file ({str(head.get('name'))[:80]!r})")
    return head


def write_if_changed(path: str | os.PathLike, data: bytes) -> bool:
    """Write ``data`` to ``path`` atomically unless the file already holds exactly these bytes; return
    whether it was written (an unchanged file keeps its modification time)."""
    path = Path(path)
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def index_repair(path: str | os.PathLike) -> object:
    """The repair mark of the batch index at ``path`` (``None``: none, or no readable index)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8")).get("repair")
    except (OSError, ValueError, AttributeError):
        return None


def batch_index(batches: dict[str, object], repair: object = None) -> bytes:
    """The batch index: per batch, the sha256 of everything its job's output depends on (its plates
    with their content digests, the settings, the software), as the bytes of ``batches/index.json``.

    It is an input of ``collect``, written before each run's DAG is built, only when it changes
    (:func:`write_if_changed`): a new or changed plate makes it newer than the result tables, so
    ``collect`` reruns — and with it every batch job whose output is missing — whether or not a
    batch job failed in between. Snakemake alone does not regenerate a deleted intermediate file
    whose consumers' outputs are up to date (snakemake/snakemake#1978): after a batch job failed
    once, later runs said "Nothing to be done" and new plates never reached the tables. ``repair``
    (what was found damaged, and when) is kept in the index until the next repair: a new mark makes
    ``collect`` rewrite the results (:func:`check_results`).
    """
    digests = {b: batch_digest(params) for b, params in sorted(batches.items())}
    data = {"format": 1, "batches": digests, "repair": repair}
    return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()


def batch_digest(params: object) -> str:
    """sha256 of a batch job's parameters (its plates with their content digests, the settings, the software)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


def batch_inputs(batch: str, params: object) -> bytes:
    """The bytes of a batch's input manifest (``batches/<batch>.inputs.json``): the batch job's one input.

    Its plates' files are in the archive, content-addressed and never changed in place, and their
    digests are in the job's parameters; listing those files as the job's inputs made Snakemake stat
    them when it planned the run and hash each (all under 1 MB) after the job, for every output:
    5,000 hashes when one plate is added to a 2,500-plate batch. The manifest is rewritten only when
    the batch's parameters change (:func:`write_if_changed`), so its time moves only then.
    """
    data = {"format": 1, "batch": batch, "sha256": batch_digest(params)}
    return (json.dumps(data, sort_keys=True) + "\n").encode()


def written_by_other_software(path: str | os.PathLike) -> bool:
    """Whether the stored file at ``path`` names other software than this one in its header (its
    first line only is read). Snakemake reruns a batch for new software through the batch's
    parameters, as recorded in its metadata (``.snakemake/``); without that record (a new pipeline
    folder, a cleaned ``.snakemake``) the old batch output would reach ``collect``."""
    try:
        with open(path, "rb") as fh:
            head = json.loads(fh.readline(MAX_HEADER))
    except (OSError, ValueError):
        return False  # damage, not age: verify() says so
    return isinstance(head, dict) and head.get("software") != software()


def verify(path: str | os.PathLike) -> str | None:
    """Why a stored file is damaged (no header, a damaged one, another file's, payload size or sha256
    not the recorded ones), or ``None`` when it is intact; kind, format and software are not looked
    at (other software reruns a batch through its parameters, not as damage)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    end = data.find(b"\n", 0, MAX_HEADER)
    try:
        head = json.loads(data[:end]) if end >= 0 else None
    except ValueError:
        head = None
    if not isinstance(head, dict):
        return "has no usable header"
    if head.get("name") != Path(path).name:
        return "holds the data of another file"
    payload = data[end + 1 :]
    if head.get("bytes") != len(payload) or head.get("sha256") != hashlib.sha256(payload).hexdigest():
        return "is damaged or truncated (checksum mismatch)"
    return None


def size_mtime(path: str | os.PathLike) -> list[int] | None:
    """``[size, mtime_ns]`` of a file, ``None`` if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _identity(path: str | os.PathLike) -> list[int] | None:
    """:func:`cr51.digests.stat_identity` of the file, ``None`` if there is none."""
    try:
        return stat_identity(os.stat(path))
    except OSError:
        return None


def write_results_manifest(path: str | os.PathLike, tables: list[str], batches: list[str]) -> None:
    """Record the sha256 and the stat identity (:func:`_identity`) of every result file (``tables``) and
    the size and modification time of every batch file, as a successful run left them (checked by
    :func:`check_results` when the next run is parsed)."""
    data = {
        "format": 2,
        "tables": {t: [result_digest(t), _identity(t)] for t in tables},
        "batches": {b: size_mtime(b) for b in batches},
    }
    write_if_changed(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


def check_results(path: str | os.PathLike, tables: list[str], batches: list[str]) -> tuple[list[str], list[str]]:
    """(result files missing or changed since the manifest at ``path`` recorded them — all that exist
    when there is no readable manifest —, batch files recorded but now missing or damaged, or
    written by other software: :func:`written_by_other_software`).

    A batch file is verified (:func:`verify`, its whole payload hashed) only when its size or
    modification time is not what was recorded, and a result file is hashed only when its stat
    identity is not the recorded one (250 MB of tables at 10,000 plates), so that a run with nothing
    to do stats the files and reads none.
    """
    old = [b for b in batches if written_by_other_software(b)]
    try:
        manifest = json.loads(Path(path).read_text(encoding="utf-8"))
        if manifest["format"] != 2:
            raise ValueError("an older manifest")
        recorded_tables, recorded_batches = dict(manifest["tables"]), dict(manifest["batches"])
    except (OSError, ValueError, KeyError, TypeError):
        return [t for t in tables if os.path.exists(t)], old

    def intact(t: str) -> bool:
        recorded = recorded_tables.get(t)
        if not (isinstance(recorded, list) and len(recorded) == 2):
            return False
        if (now := _identity(t)) is not None and now == recorded[1]:
            return True
        return (sha := result_digest(t)) is not None and sha == recorded[0]

    bad_tables = [t for t in tables if not intact(t)]
    bad_batches = list(old)
    for b in (b for b in batches if b not in old):
        now = size_mtime(b)
        if now is None:
            if recorded_batches.get(b) is not None:
                bad_batches.append(b)
        elif now != recorded_batches.get(b) and verify(b) is not None:
            bad_batches.append(b)
    return bad_tables, bad_batches
