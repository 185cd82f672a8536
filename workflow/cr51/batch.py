"""One batch job: every plate of the batch from raw files to potency and its page, in one process.

Plates are processed one at a time and their results concatenated in plate order, so a plate's
rows do not depend on its batch. Each plate renders its rows of every result table to CSV text once
(:func:`cr51.tables.render_rows`), its page (``results/plates/<name>.html``, :mod:`cr51.report.plate_page`)
and its standalone curves figure; ``collect`` only concatenates rows and never reads a plate's
frames back (see :mod:`cr51.collect`). A :class:`PlateCache` keeps each plate's results under a key
made of everything they depend on (the plate's file contents, the settings and the package's
source code): when a batch reruns because one plate was added or changed, the other plates are
read back instead of recomputed, and a page whose bytes are already on disk is not written again
(same bytes, same mtime). A stale key is never read; entries a run did not use are removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from . import store
from .campaign import products_of
from .digests import content_digest, software_digest
from .plate import PlateInput, analyse_batch, ingest_batch, rejected_tables
from .report import plate_sections
from .report.plate_page import plate_figures, plate_files, plate_page
from .schema import PLATE_TABLES, TABLES, Table
from .settings import Analysis
from .store import StaleFile
from .tables import Rows, read_table, render_rows, write_if_changed

log = logging.getLogger(__name__)


def frame_of(parts: list[Rows | None], table: Table) -> pd.DataFrame:
    """The frame that reading the CSV of ``parts`` under ``table``'s header gives (what ``collect`` writes)."""
    text = ",".join(table.names) + "\n" + "".join(p.text for p in parts if p is not None)
    return read_table(io.StringIO(text), table)


@dataclass(frozen=True)
class PlateOutput:
    """One plate's results, as the result tables and the report need them.

    Attributes
    ----------
    rows
        Its rows of every table of :data:`cr51.schema.PLATE_TABLES`, rendered as the CSV writes them
        (``None`` where it has none).
    products
        {lot: product} of its layout (the first non-empty product of each lot).
    files
        Relative to ``results/``, the files it shows: {path: text} — its page and its curves figure
        (empty for a plate without a QC row).
    """

    rows: dict[str, Rows | None]
    products: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def frame(self, name: str) -> pd.DataFrame:
        """Its rows of table ``name`` as a frame."""
        return frame_of([self.rows.get(name)], TABLES[name])


@dataclass(frozen=True)
class BatchOutput:
    """What a batch job writes (``results/batches/<batch>.jsonl``, read by ``collect``): per table the
    rendered rows of each plate that has rows, in plate order; the archived version each plate's results
    are from; each plate's {lot: product}; the files (pages, figures) each plate owns under ``results/``.

    For the batch's next job (:func:`process_batch`'s ``previous``): each plate's ``sources`` (what its
    results were computed from: :func:`sources_of`) and, per file a plate owns, ``[size, mtime_ns]`` as
    this job left it on disk (``stats``).
    """

    rows: dict[str, list[tuple[str, Rows]]]
    versions: dict[str, int] = field(default_factory=dict)
    products: dict[str, dict[str, str]] = field(default_factory=dict)
    files: dict[str, list[str]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    stats: dict[str, list[int]] = field(default_factory=dict)

    @cached_property
    def tables(self) -> dict[str, pd.DataFrame]:
        """Every table of the batch as a frame (read from the rendered rows, as collect's CSVs read)."""
        return {name: frame_of([r for _, r in self.rows.get(name, [])], TABLES[name]) for name in PLATE_TABLES}


#: Stored-file kinds and formats (:mod:`cr51.store`); a change of what is stored bumps the format.
BATCH_KIND, PLATE_KIND, STORE_FORMAT = "cr51-batch", "cr51-plate", 8


def _rows_to_data(rows: Rows | None) -> str | None:
    return None if rows is None else rows.text


def plate_to_data(out: PlateOutput) -> dict[str, Any]:
    """A plate's results as plain data (JSON): rendered rows, products, page and figure texts; no code."""
    return {"rows": {k: _rows_to_data(v) for k, v in out.rows.items()}, "products": out.products, "files": out.files}


def plate_from_data(data: dict[str, Any]) -> PlateOutput:
    rows = {str(k): None if v is None else Rows.of_text(str(k), str(v)) for k, v in data["rows"].items()}
    if set(rows) != set(PLATE_TABLES):
        raise ValueError("not every table's rows")
    return PlateOutput(
        rows,
        {str(k): str(v) for k, v in data["products"].items()},
        {str(k): str(v) for k, v in data["files"].items()},
    )


def batch_to_payload(out: BatchOutput) -> bytes:
    """A batch output as stored: one line of JSON, then the rows themselves (UTF-8 bytes, each table's
    plates one after another). The JSON holds the batch's plate names once (``plates``) and per table
    (``index``) which plates have rows (``at``: positions in ``plates``) and how many bytes each
    (``sizes``, in bytes): the rows follow in that order, table after table; then versions, products, files,
    sources, stats. Never code.

    The rows are not JSON strings (decoding ~65 MB of escaped CSV text per 2,500-plate batch was most
    of reading a batch file), nor decoded when read: ``collect`` writes them as they are.
    """
    chunks: list[bytes] = []
    plates: dict[str, int] = {}
    index: dict[str, dict[str, list[int]]] = {}
    for name, parts in out.rows.items():
        entry = index.setdefault(name, {"at": [], "sizes": []})
        for plate, rows in parts:
            entry["at"].append(plates.setdefault(plate, len(plates)))
            entry["sizes"].append(len(rows.data))
            chunks.append(rows.data)
    body = b"".join(chunks)
    meta = {
        "plates": list(plates),
        "index": index,
        "bytes": len(body),
        "versions": out.versions,
        "products": out.products,
        "files": out.files,
        "sources": out.sources,
        "stats": out.stats,
    }
    return _encode(meta) + b"\n" + body


def batch_from_payload(payload: bytes) -> BatchOutput:
    """The :class:`BatchOutput` of :func:`batch_to_payload`'s bytes; ``ValueError`` (or another
    exception) for anything else."""
    end = payload.find(b"\n")
    if end < 0:
        raise ValueError("no rows section")
    data = json.loads(payload[:end].decode("utf-8"))
    body = memoryview(payload)[end + 1 :]  # not copied: each plate's rows are
    if len(body) != int(data["bytes"]):
        raise ValueError("rows section of another length")
    plates = [str(p) for p in data["plates"]]
    rows: dict[str, list[tuple[str, Rows]]] = {}
    pos = 0
    for name, entry in data["index"].items():
        at, sizes = entry["at"], entry["sizes"]
        if len(at) != len(sizes):
            raise ValueError("an index of rows without their sizes")
        name = str(name)
        parts = rows.setdefault(name, [])
        for i, size in zip(at, sizes):
            if not (isinstance(i, int) and isinstance(size, int)) or i < 0 or size <= 0:
                raise ValueError("a bad row index")
            parts.append((plates[i], Rows(name, body[pos : pos + size])))  # a view, not a copy
            pos += size
    if pos != len(body):
        raise ValueError("row sizes that do not add up to the rows section")
    return BatchOutput(
        rows,
        {str(k): int(v) for k, v in data["versions"].items()},
        {str(k): {str(a): str(b) for a, b in v.items()} for k, v in data["products"].items()},
        {str(k): [str(f) for f in v] for k, v in data["files"].items()},
        {str(k): str(v) for k, v in data["sources"].items()},
        {str(k): [int(n) for n in v] for k, v in data["stats"].items()},
    )


def _encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _decode(payload: bytes, what: str, build: Callable[[dict[str, Any]], Any]) -> Any:
    """``build(json.loads(payload))``; :class:`StaleFile` for anything that is not such data."""
    return _decode_bytes(payload, what, lambda b: build(json.loads(b.decode("utf-8"))))


def _decode_bytes(payload: bytes, what: str, build: Callable[[bytes], Any]) -> Any:
    """``build(payload)``; :class:`StaleFile` for anything that is not such data."""
    try:
        return build(payload)
    except Exception as err:  # noqa: BLE001 - any failure to decode means: not usable
        raise StaleFile(f"does not hold {what} ({type(err).__name__})") from None


#: Where a batch job keeps a hard link to its output for the batch's next job (in its plate-cache
#: folder): Snakemake deletes a job's output before it runs the job again.
PREVIOUS = "previous-output.link"


def save_batch(out: BatchOutput, path: str | os.PathLike, keep_in: str | os.PathLike | None = None) -> None:
    """Write a batch's output atomically: a header (:mod:`cr51.store`), then :func:`batch_to_payload`'s
    bytes (data, never code).
    With ``keep_in`` (the batch's plate-cache folder) also hard-link it there as :data:`PREVIOUS`."""
    store.write(path, BATCH_KIND, STORE_FORMAT, batch_to_payload(out))
    if keep_in is not None:
        link = Path(keep_in) / PREVIOUS
        tmp = link.with_name(f".{PREVIOUS}.{os.getpid()}.tmp")
        try:
            link.parent.mkdir(parents=True, exist_ok=True)
            tmp.unlink(missing_ok=True)
            os.link(path, tmp)
            os.replace(tmp, link)
        except OSError:  # no hard links here: the next job reads its plates from the plate cache
            tmp.unlink(missing_ok=True)
            link.unlink(missing_ok=True)


def load_batch(path: str | os.PathLike, name: str | None = None) -> BatchOutput:
    """Read what :func:`save_batch` wrote; :class:`cr51.store.StaleFile` when it cannot be used
    (other software, damaged, not a batch output). ``name``: the output's own file name, for a link."""
    return _decode_bytes(store.read(path, BATCH_KIND, STORE_FORMAT, name), "a batch output", batch_from_payload)


def load_previous(cache_dir: str | os.PathLike, output: str | os.PathLike) -> BatchOutput | None:
    """The batch's last output as its job kept it (:func:`save_batch`'s ``keep_in``), or ``None``
    (none, damaged, other software: the plates are then read from the plate cache)."""
    path = Path(cache_dir) / PREVIOUS
    if not path.exists():
        return None
    try:
        return load_batch(path, Path(output).name)
    except StaleFile as err:
        log.warning("previous output of the batch %s: reading its plates from the plate cache", err)
        return None


def load_batches(paths: list[str]) -> list[BatchOutput]:
    """Every batch output of ``paths``; one that cannot be used is removed (so that the next run
    recomputes it) and the run stops with the reason: a result from other software is never mixed in."""
    out = []
    for path in paths:
        try:
            out.append(load_batch(path))
        except StaleFile as err:
            Path(path).unlink(missing_ok=True)
            raise RuntimeError(f"batch output {path} {err}: removed; the next run recomputes it") from None
    return out


class PlateCache:
    """Per-plate results on disk (``<directory>/<key>.jsonl``), keyed by content, not by time.

    The key covers the plate's name and file contents, the analysis settings and the software (code
    digest, Python and library versions); each entry carries a checked header (:mod:`cr51.store`).
    An entry that cannot be used is recomputed, with a note in the batch log. The folder belongs to
    the pipeline (inside ``results_dir``); nothing else writes there.
    """

    def __init__(self, directory: str | os.PathLike, settings: Analysis | Mapping[str, Any]) -> None:
        self.directory = Path(directory)
        salt = json.dumps(Analysis.of(settings).to_dict(), sort_keys=True)
        self._salt = hashlib.sha256(f"{STORE_FORMAT}\n{software_digest()}\n{salt}".encode()).digest()
        self.used: set[str] = set()

    def key(self, plate: PlateInput, max_bytes: int) -> str:
        """Digest of the plate's name and the contents of its layout, templates and export (the
        scan's digest, computed at parse time, where the plate carries it)."""
        content = plate.digest or content_digest([plate.layout, *plate.includes, plate.export], max_bytes)
        h = hashlib.sha256(self._salt)
        h.update(plate.name.encode("utf-8", "surrogateescape"))
        h.update(content.encode())
        return h.hexdigest()

    def get(self, key: str) -> PlateOutput | None:
        """The entry stored under ``key``, or ``None`` (absent, or not usable: noted in the log)."""
        self.used.add(key)
        path = self.directory / f"{key}.jsonl"
        if not path.exists():
            return None
        try:
            out = _decode(store.read(path, PLATE_KIND, STORE_FORMAT), "a plate's results", plate_from_data)
        except Exception as err:  # noqa: BLE001 - a bad entry is recomputed, never fatal
            log.warning("plate cache entry %s %s: recomputing the plate", path.name, err)
            return None
        return out

    def put(self, key: str, out: PlateOutput) -> None:
        store.write(self.directory / f"{key}.jsonl", PLATE_KIND, STORE_FORMAT, _encode(plate_to_data(out)))

    def prune(self) -> None:
        """Remove the entries this run did not use (superseded plates, old settings or code)."""
        if not self.directory.is_dir():
            return
        for path in self.directory.iterdir():
            if path.suffix == ".jsonl" and path.stem not in self.used:
                path.unlink(missing_ok=True)


def process_plate(plate: PlateInput, settings: Analysis | Mapping[str, Any]) -> PlateOutput:
    """One plate's rows of every table — files, wells, lysis, qc; fits, potency, lots_differ — its
    products, and its page and curves figure (a plate with a QC row)."""
    settings = Analysis.of(settings)
    tables = ingest_batch([plate], settings)
    tables.update(analyse_batch(tables["wells"], tables["qc"], settings))
    rows = {name: render_rows(tables[name], TABLES[name]) for name in PLATE_TABLES}
    files = {}
    for name, section in plate_sections(tables, settings).items():
        files[plate_files(name)[0]] = plate_page(
            section, tables["qc"], tables["potency"], tables["files"], plate.version, settings
        )
        files.update(plate_figures(section, tables["qc"]))
    return PlateOutput(rows, products_of(tables["wells"]), files)


def _with_files(out: PlateOutput, files: pd.DataFrame) -> PlateOutput:
    return replace(out, rows={**out.rows, "files": render_rows(files, TABLES["files"])})


class PlateTimeout(BaseException):
    """A plate's processing took longer than its time limit (:func:`time_limit`). A ``BaseException``
    (as ``KeyboardInterrupt``), so that the stages' own ``except Exception`` do not take it for that
    stage's error: :func:`process_batch` catches it."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"longer than {seconds:g} s")
        self.seconds = seconds


def _import_stages() -> None:
    """Import the libraries the stages import when first used (lmfit, wellmap: ~2 s together)."""
    import lmfit  # noqa: F401
    import wellmap  # noqa: F401


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`PlateTimeout` in the block when it runs longer than ``seconds`` (a real-time
    interval timer: SIGALRM, handled when the interpreter next runs Python code, which every fit does
    at each step). No limit for ``None``, off the main thread or without ``setitimer``."""
    usable = (
        seconds is not None and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def expired(signum: int, frame: object) -> None:
        raise PlateTimeout(seconds)

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def guarded(plate: PlateInput, settings: Analysis, err: BaseException) -> PlateOutput:
    """The output of a plate whose processing raised ``err``: both files ``rejected`` with the reason."""
    if isinstance(err, PlateTimeout):
        reason = (
            f"processing this plate took longer than max_plate_seconds = {err.seconds:g} s and was stopped "
            "(not cached: the next run tries again); see the batch log"
        )
    else:
        reason = f"internal error while processing this plate ({type(err).__name__}); see the batch log"
    tables = rejected_tables(plate, reason, settings.max_export_bytes)
    return PlateOutput({name: render_rows(tables[name], TABLES[name]) for name in PLATE_TABLES})


def with_notes(out: PlateOutput, notes: dict[str, tuple[str, str]]) -> PlateOutput:
    """``out`` with the files.csv rows of the noted files changed (status "": the row is left out,
    the drop folder's own row speaks for that file)."""
    if not notes:
        return out
    files = out.frame("files")
    keep = []
    for i, name in enumerate(files["file"]):
        status, reason = notes.get(name, (None, None))
        if status == "":
            continue
        if status is not None:
            files.loc[files.index[i], ["status", "reason"]] = [status, reason]
        keep.append(files.index[i])
    return _with_files(out, files.loc[keep].reset_index(drop=True))


def kept_version(refused: PlateOutput, kept: PlateOutput, version: int) -> PlateOutput:
    """The results of the accepted version ``kept``, with the refused version's files.csv rows saying
    why it was refused and that the plate keeps ``version``."""
    files = refused.frame("files")
    files["reason"] = files["reason"] + f"; the plate keeps its accepted version {version}"
    older = kept.frame("files")
    older = older[~older["file"].isin(files["file"])]
    return _with_files(kept, pd.concat([files, older], ignore_index=True))


def refused(out: PlateOutput) -> bool:
    """Whether the plate's version was refused (no QC row: its files are rejected)."""
    return out.rows["qc"] is None and bool((out.frame("files")["status"] == "rejected").any())


def sources_of(plate: PlateInput, fallback: PlateInput | None, keys: list[str]) -> str:
    """What a plate's output in a batch is computed from: the cache keys of its version and of the
    accepted version it falls back to (``fallback``; each key covers the files' contents, settings and
    software), its version numbers and the scan's notes on its files. Equal sources: equal output."""
    data = [keys, plate.version, fallback.version if fallback else None, [list(n) for n in plate.notes]]
    return hashlib.sha256(json.dumps(data, ensure_ascii=False).encode("utf-8", "surrogateescape")).hexdigest()


class _Carried:
    """The previous output of a batch, by plate: what :func:`process_batch` can take over unread."""

    def __init__(self, previous: BatchOutput | None, results_dir: Path | None) -> None:
        self.previous, self.results_dir = previous, results_dir
        self.rows: dict[str, dict[str, Rows]] = {}
        if previous is not None:
            for name, parts in previous.rows.items():
                for plate, rows in parts:
                    self.rows.setdefault(plate, {})[name] = rows

    def take(self, name: str, sources: str) -> tuple[PlateOutput, int] | None:
        """The plate's previous output (texts of its files not included) and version when its sources
        are the same and every file it owns is on disk as the previous job left it; else ``None``."""
        prev = self.previous
        if prev is None or self.results_dir is None or prev.sources.get(name) != sources:
            return None
        files = prev.files.get(name, [])
        if any(store.size_mtime(self.results_dir / f) != prev.stats.get(f) for f in files):
            return None
        rows = {t: self.rows.get(name, {}).get(t) for t in PLATE_TABLES}
        return PlateOutput(rows, prev.products.get(name, {}), dict.fromkeys(files, "")), prev.versions[name]


def process_batch(
    plates: list[PlateInput],
    settings: Analysis | Mapping[str, Any],
    cache: PlateCache | None = None,
    results_dir: str | os.PathLike | None = None,
    previous: BatchOutput | None = None,
    max_plate_seconds: float | None = None,
) -> BatchOutput:
    """Every plate of a batch (in the given order), from ``cache`` where it holds the plate.

    A plate version the pipeline refuses, whose plate has an accepted version (``fallback``), keeps
    the accepted version's results (:func:`kept_version`); the scan's notes on the plate's files
    (gone from the drop folder, a re-export settling) are applied last (:func:`with_notes`).
    With ``results_dir`` each plate's page and figure are written there (only when their bytes changed).

    ``previous`` (the batch's last output, with ``cache`` and ``results_dir``): a plate whose sources
    (:func:`sources_of`) are unchanged and whose page and figure are on disk as that job left them
    (size and modification time) is taken over from it without reading its cache entry or its files:
    adding one plate to a batch of thousands reads one output, not thousands of entries and pages.

    ``max_plate_seconds``: a plate computed for longer is stopped (:func:`time_limit`) and rejected
    with that reason (:func:`guarded`), not cached; the other plates go on.
    """
    settings = Analysis.of(settings)
    max_bytes = settings.max_export_bytes
    root = Path(results_dir) if results_dir is not None else None
    carried = _Carried(previous if cache else None, root)
    outs, versions, sources, stats = [], {}, {}, {}
    hits = taken = written = 0

    def get(plate: PlateInput, key: str) -> tuple[PlateOutput, bool]:
        """The plate's output (``key``: its cache key) and whether it is cached (a guarded failure is
        not: retried next time)."""
        nonlocal hits
        out = cache.get(key) if cache else None
        if out is not None:
            hits += 1
            return out, True
        if max_plate_seconds is not None:
            _import_stages()  # outside the limit: an import cut short would break every later plate
        try:
            with time_limit(max_plate_seconds):
                out = process_plate(plate, settings)
        except (Exception, PlateTimeout) as err:  # noqa: BLE001 - one plate never takes the batch down (not cached: retried)
            log.exception("plate %r: unexpected error", plate.name)
            return guarded(plate, settings, err), False
        if cache:
            cache.put(key, out)
        return out, True

    for plate in plates:
        fallback = plate.fallback_input()
        keys = [cache.key(p, max_bytes) for p in (plate, fallback) if p is not None] if cache else ["", ""]
        source = sources_of(plate, fallback, keys)
        kept = carried.take(plate.name, source)  # None without a cache: nothing was carried
        if kept is not None:
            out, version = kept
            cache.used.update(keys)
            taken += 1
            outs.append(out)
            versions[plate.name], sources[plate.name] = version, source
            stats.update({f: previous.stats[f] for f in out.files})
            continue
        (out, ok), version = get(plate, keys[0]), plate.version
        if fallback is not None and refused(out):
            older, ok_fallback = get(fallback, keys[1])
            out, version, ok = kept_version(out, older, fallback.version), fallback.version, ok and ok_fallback
        out = with_notes(out, dict(plate.notes))
        if root is not None:
            for rel, text in out.files.items():
                written += write_if_changed(root / rel, text)
                if ok and (st := store.size_mtime(root / rel)) is not None:
                    stats[rel] = st
        # the texts are on disk (or were not asked for): a batch of 2,500 plates held ~100 MB of them
        outs.append(replace(out, files=dict.fromkeys(out.files, "")))
        versions[plate.name] = version
        if ok and cache:
            sources[plate.name] = source
    if cache:
        cache.prune()
        log.info(
            "%d plate(s): %d taken over from the batch's previous output, %d read back from the plate cache; "
            "%d page/figure file(s) written",
            len(plates), taken, hits, written,
        )  # fmt: skip
    rows = {
        name: [(p.name, r) for p, o in zip(plates, outs) if (r := o.rows[name]) is not None] for name in PLATE_TABLES
    }
    return BatchOutput(
        rows,
        versions,
        {p.name: o.products for p, o in zip(plates, outs) if o.products},
        {p.name: sorted(o.files) for p, o in zip(plates, outs) if o.files},
        sources,
        stats,
    )
