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

from .digests import software

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


def read(path: str | os.PathLike, kind: str, fmt: int) -> bytes:
    """The payload of a file :func:`write` wrote; :class:`StaleFile` (with the reason) otherwise."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as err:
        raise StaleFile(f"cannot be read ({err.strerror or err})") from None
    end = data.find(b"\n", 0, MAX_HEADER)
    if end < 0:
        raise StaleFile("has no header")
    try:
        head = json.loads(data[:end])
    except ValueError:
        raise StaleFile("has a damaged header") from None
    if not isinstance(head, dict) or head.get("kind") != kind:
        raise StaleFile(f"is not a {kind} file")
    if head.get("format") != fmt:
        raise StaleFile(f"has format {head.get('format')!r}, this software reads {fmt}")
    if head.get("software") != software():
        raise StaleFile("was written by other software (code or library versions differ)")
    if head.get("name") != Path(path).name:
        raise StaleFile(f"holds the data of another file ({str(head.get('name'))[:80]!r})")
    payload = data[end + 1 :]
    if head.get("bytes") != len(payload) or head.get("sha256") != hashlib.sha256(payload).hexdigest():
        raise StaleFile("is damaged or truncated (checksum mismatch)")
    return payload


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


def batch_index(batches: dict[str, object]) -> bytes:
    """The batch index: per batch, the sha256 of everything its job's output depends on (its plates
    with their content digests, the settings, the software), as the bytes of ``batches/index.json``.

    It is an input of ``collect`` written at parse time only when it changes
    (:func:`write_if_changed`): a new or changed plate makes it newer than the result tables, so
    ``collect`` reruns — and with it every batch job whose output is missing — whether or not a
    batch job failed in between. Snakemake alone does not regenerate a deleted intermediate file
    whose consumers' outputs are up to date (snakemake/snakemake#1978): after a batch job failed
    once, later runs said "Nothing to be done" and new plates never reached the tables.
    """
    digests = {
        b: hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()
        for b, params in sorted(batches.items())
    }
    return (json.dumps({"format": 1, "batches": digests}, indent=1, sort_keys=True) + "\n").encode()
