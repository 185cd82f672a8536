"""The lab's record: the drop folder is an inbox, the results folder keeps what it accepted.

Standard library only: it runs when the workflow is parsed, right after :func:`cr51.scan.scan`.

* Every input of a plate the scan forms (layout, included templates, export) is copied once into a
  content-addressed archive, ``<results_dir>/archive/blobs/<sha256[:2]>/<sha256>`` (read-only, its
  name checked against its bytes), and recorded as a *version* of the plate in
  ``<results_dir>/archive/registry.json``. Plates are computed from the archive: each version is laid
  out under its original file names in ``archive/plates/<plate id>/v<N>/`` (hard links to the blobs).
* A plate whose files leave the drop folder stays: its files get status ``gone`` in files.csv and the
  plate is computed from its archived version. A re-export with other bytes is a new version; one
  still settling, or a layout the scan refuses, leaves the plate on its accepted version.
* ``<plate>.retract`` in the drop folder (its text is the reason) takes the plate out of every table;
  deleting it restores the plate. Nothing is deleted from the archive.
* An inbox that suddenly holds far fewer of the accepted plates than the archive (empty, or below
  ``inbox_min_share`` of them: an unmounted share looks like that) stops the run before anything is
  written (:class:`InboxShrunk`), unless ``confirm_cleanout`` says the clean-out is real.

Which version's results are current is decided after processing, by ``collect``
(``archive/history.json``, :mod:`cr51.history`): a re-export the pipeline rejects does not replace the
accepted results, the batch job falls back to the version that was accepted.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from .digests import content_digest, stat_identity
from .includes import MAX_LAYOUT_BYTES
from .scan import FileStatus, PlateFiles, Retraction, Scan, batch_of, file_name, scan
from .statcache import StatCache

FORMAT = 1
ARCHIVE = "archive"
REGISTRY = "registry.json"
HISTORY = "history.json"
#: The drop folder's sha256 by stat (:mod:`cr51.statcache`), under results_dir.
STAT_CACHE = ".stat-cache.json"


class InboxShrunk(Exception):
    """The drop folder holds far fewer of the accepted plates than the archive; nothing was run."""


class ArchiveError(Exception):
    """The archive or its registry cannot be used (damaged, unreadable); ``str(exc)`` says why."""


def iso(t: float) -> str:
    """An epoch time as ISO 8601 (UTC, seconds)."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def plate_id(plate: str) -> str:
    """A folder name for a plate (plate names may hold any printable character)."""
    return "p" + hashlib.sha256(plate.encode("utf-8", "surrogateescape")).hexdigest()[:16]


@dataclass(frozen=True)
class Stored:
    """One archived file: its name in the drop folder and the sha256 of its bytes."""

    name: str
    sha256: str


@dataclass(frozen=True)
class Version:
    """One set of inputs of a plate, as the scan admitted it."""

    version: int
    layout: Stored
    export: Stored
    templates: tuple[Stored, ...]
    admitted_at: str

    def files(self) -> tuple[Stored, ...]:
        return (self.layout, self.export, *self.templates)

    def same_inputs(self, other: Version) -> bool:
        return self.files() == other.files()

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "layout": vars(self.layout),
            "export": vars(self.export),
            "templates": [vars(t) for t in self.templates],
            "admitted_at": self.admitted_at,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Version:
        templates = d["templates"]
        return cls(
            int(d["version"]),
            Stored(**d["layout"]),
            Stored(**d["export"]),
            () if templates == [] else tuple(Stored(**t) for t in templates),  # most plates include none
            str(d["admitted_at"]),
        )


@dataclass
class PlateRecord:
    """A plate's versions and its state in the inbox."""

    versions: list[Version] = field(default_factory=list)
    missing_since: str | None = None  # when its files were first found gone from the drop folder
    cleanout_confirmed: bool = False  # gone, and a person confirmed the clean-out

    def to_dict(self) -> dict:
        return {
            "versions": [v.to_dict() for v in self.versions],
            "missing_since": self.missing_since,
            "cleanout_confirmed": self.cleanout_confirmed,
        }

    @classmethod
    def from_dict(cls, d: dict) -> PlateRecord:
        return cls(
            [Version.from_dict(v) for v in d["versions"]],
            d.get("missing_since"),
            bool(d.get("cleanout_confirmed", False)),
        )


def read_json(path: Path, what: str) -> dict | None:
    """A JSON record file of the archive (``None`` when absent); :class:`ArchiveError` when damaged."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ArchiveError(f"{what} {path} cannot be read ({err}); restore it from the backup") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ArchiveError(f"{what} {path} is not a format-{FORMAT} record; restore it from the backup")
    return data


def write_json(path: Path, data: dict) -> None:
    """Write a record file atomically (temporary file, fsync, rename) unless it holds these bytes already
    (a run with nothing new rewrote and synced a 10 MB history); compact JSON (one line: ``json.dump``
    with an indent ran the pure-Python encoder, 6.7 s for the history of 10,000 plates)."""
    text = json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":"))  # C encoder: ~20x faster
    try:
        if path.read_bytes() == text.encode("utf-8"):
            return
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Archive:
    """The content-addressed archive and its registry under ``<results_dir>/archive``."""

    def __init__(self, results_dir: str | os.PathLike, stats: StatCache | None = None) -> None:
        self.root = Path(results_dir) / ARCHIVE
        self._blobs = os.path.join(self.root, "blobs")  # strings: a run checks every plate's blobs
        self._plates = os.path.join(self.root, "plates")
        self.stats = stats  # the drop folder's sha256 by stat (cr51.statcache): unchanged files not read
        data = read_json(self.root / REGISTRY, "the archive registry") or {"format": FORMAT, "plates": {}}
        self.plates: dict[str, PlateRecord] = {p: PlateRecord.from_dict(r) for p, r in data["plates"].items()}
        #: each record as last read or written, reused by :meth:`_data` while its state is unchanged
        #: (one new plate: 1 record serialised, not 10,000)
        self._records: dict[str, dict] = dict(data["plates"])
        self._saved = self._state()
        self._unsynced = False

    def _state(self) -> dict[str, tuple[int, str | None, bool]]:
        """What a run can change of the registry (versions are only ever appended): compared in
        :meth:`save` instead of serialising 10,000 records twice a run to find them unchanged."""
        return {p: (len(r.versions), r.missing_since, r.cleanout_confirmed) for p, r in self.plates.items()}

    def _data(self, state: dict[str, tuple[int, str | None, bool]] | None = None) -> dict:
        """The registry as written; ``state`` (:meth:`_state` now): records whose state is the saved
        one are taken as they were read or last written."""
        if state is None:
            return {"format": FORMAT, "plates": {p: r.to_dict() for p, r in sorted(self.plates.items())}}
        saved, records = self._saved, self._records
        for p, r in self.plates.items():
            if p not in records or saved.get(p) != state[p]:
                records[p] = r.to_dict()
        return {"format": FORMAT, "plates": {p: records[p] for p in sorted(self.plates)}}

    def save(self) -> None:
        """Write the registry when it changed, after the new blobs are on disk (one ``sync`` for all of
        them rather than an fsync per file: a first run admits thousands)."""
        if self._unsynced:
            os.sync()
            self._unsynced = False
        state = self._state()
        if state != self._saved:
            write_json(self.root / REGISTRY, self._data(state))
            self._saved = state

    def blob(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256[:2] / sha256

    def _blob_size(self, sha256: str) -> int | None:
        try:
            return os.stat(f"{self._blobs}/{sha256[:2]}/{sha256}").st_size
        except OSError:
            return None

    def keep(self, path: str | os.PathLike, before: os.stat_result | None = None) -> Stored:
        """Archive the file's bytes (once) and return its name and sha256: the bytes read are the bytes kept.

        A file the stat cache knows (unchanged since its bytes were hashed) whose blob is in the archive
        is not read again; otherwise it is read, hashed and its stat recorded when it did not change
        while it was read. ``before``: the file's ``stat`` as the scan took it (else it is taken here);
        the bytes are then the ones that stat describes, or they are not recorded in the stat cache.
        """
        path = os.fspath(path)
        if self.stats is None:
            before = None
        elif before is None:
            before = os.stat(path)
        if self.stats is not None and before is not None:
            sha = self.stats.known(path, before)
            if sha is not None and self._blob_size(sha) == before.st_size:
                return Stored(os.path.basename(path), sha)
        with open(path, "rb") as fh:
            data = fh.read()
        sha = hashlib.sha256(data).hexdigest()
        if self.stats is not None and before is not None and before.st_size == len(data):
            if stat_identity(os.stat(path)) == stat_identity(before):  # not changed while it was read
                self.stats.record(path, before, sha)
        blob = self.blob(sha)
        if self._blob_size(sha) != len(data):
            blob.parent.mkdir(parents=True, exist_ok=True)
            tmp = blob.with_name(f".{sha}.{os.getpid()}.tmp")
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                os.chmod(tmp, 0o444)
                os.replace(tmp, blob)
                self._unsynced = True
            finally:
                tmp.unlink(missing_ok=True)
        return Stored(os.path.basename(path), sha)

    def version_dir(self, plate: str, version: int) -> Path:
        return self.root / "plates" / plate_id(plate) / f"v{version}"

    def lay_out(self, plate: str, v: Version) -> tuple[str, str, tuple[str, ...]]:
        """The version's files under their original names (hard links to the blobs): layout, export,
        templates. A blob whose bytes no longer match its name raises :class:`ArchiveError`."""
        folder = f"{self._plates}/{plate_id(plate)}/v{v.version}"  # str(self.version_dir(plate, v.version))
        paths = []
        for f in v.files():
            target = os.path.join(folder, f.name)  # strings: a run lays out every plate (20,000 files)
            if not os.path.exists(target):
                folder = self.version_dir(plate, v.version)
                folder.mkdir(parents=True, exist_ok=True)
                target = folder / f.name
                blob = self.blob(f.sha256)
                if not blob.exists():
                    raise ArchiveError(f"archived file {f.name} ({f.sha256}) of plate {plate} is missing")
                try:
                    os.link(blob, target)
                except OSError:  # a file system without hard links
                    target.write_bytes(blob.read_bytes())
            paths.append(str(target))
        return paths[0], paths[1], tuple(paths[2:])

    def admit(
        self,
        plate: str,
        layout: str,
        export: str,
        templates: tuple[str, ...],
        now: float,
        stats: Mapping[str, os.stat_result] | None = None,
    ) -> Version:
        """The version these inputs are: the current one when the bytes are the same, else a new one.
        ``stats``: the files' ``stat`` by path as the scan took them (:meth:`keep`)."""
        stats = stats or {}
        files = (
            self.keep(layout, stats.get(layout)),
            self.keep(export, stats.get(export)),
            tuple(self.keep(t, stats.get(t)) for t in templates),
        )
        record = self.plates.setdefault(plate, PlateRecord())
        current = record.versions[-1] if record.versions else None
        if current is not None and current.files() == (files[0], files[1], *files[2]):  # Version.same_inputs
            return current
        candidate = Version((current.version + 1) if current else 1, files[0], files[1], files[2], iso(now))
        record.versions.append(candidate)
        return candidate


def version_digest(plate: str, v: Version) -> str:
    """The plate's content digest (batch parameter, cache key) from its archived files' sha256."""
    h = hashlib.sha256(plate.encode("utf-8", "surrogateescape"))
    for f in v.files():
        h.update(f"\n{f.name}\n{f.sha256}".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def accepted_versions(results_dir: str | os.PathLike) -> dict[str, int]:
    """{plate: the version whose results are current} from ``archive/history.json`` (collect writes it)."""
    data = read_json(Path(results_dir) / ARCHIVE / HISTORY, "the plate history") or {"plates": {}}
    out = {}
    for plate, entries in data["plates"].items():
        current = [e for e in entries if e.get("replaced_at") is None]
        if current:
            out[plate] = int(current[-1]["version"])
    return out


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Python's cyclic garbage collector paused for the block (then restored as it was). The parse-time
    work allocates some 100,000 objects (the registry's records, the listing, the plates) that stay alive
    until it returns and form no cycles, so the collector only walked them again and again (0.1 s at
    10,000 plates); they are freed by reference counting as before. Also the whole ``collect`` job
    (:func:`cr51.jobs.run_job`'s ``gc_paused``)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@paused_gc()
def scan_inbox(
    raw_dir: str | os.PathLike,
    results_dir: str | os.PathLike,
    *,
    layouts_dir: str | os.PathLike,
    batch_count: int,
    settle_seconds: float,
    max_bytes: int,
    min_share: float,
    confirm_cleanout: bool,
    stale_after_hours: float,
    now: float | None = None,
    max_layout_bytes: int = MAX_LAYOUT_BYTES,
) -> Scan:
    """The run's plates: the drop folder scanned (:func:`cr51.scan.scan`), then admitted into the
    archive (:func:`admit`), with the garbage collector paused (:func:`paused_gc`). What the Snakefile
    calls at parse time."""
    stats = StatCache(Path(results_dir) / STAT_CACHE)
    archive = Archive(results_dir, stats)
    accepted = frozenset(r.versions[-1].layout.name for r in archive.plates.values() if r.versions)
    seen: dict[str, os.stat_result] = {}  # the stat the scan took of each plate's files
    inbox = scan(
        raw_dir,
        layouts_dir=layouts_dir,
        batch_count=batch_count,
        settle_seconds=settle_seconds,
        now=now,
        max_bytes=max_bytes,
        max_layout_bytes=max_layout_bytes,
        meta_cache=Path(results_dir) / ".scan-cache.json",
        stale_seconds=stale_after_hours * 3600,
        accepted_layouts=accepted,
        digests=False,  # admit() reads and hashes each plate's bytes once, as it archives them
        stat_cache=stats,
        stats_out=seen,
    )
    out = admit(
        inbox,
        archive,
        batch_count=batch_count,
        min_share=min_share,
        confirm_cleanout=confirm_cleanout,
        max_bytes=max_bytes,
        now=now,
        stats=seen,
    )
    stats.save()
    return out


def admit(
    inbox: Scan,
    archive: Archive,
    *,
    batch_count: int,
    min_share: float,
    confirm_cleanout: bool,
    max_bytes: int = 20_000_000,
    now: float | None = None,
    stats: Mapping[str, os.stat_result] | None = None,
) -> Scan:
    """The run's plates from the inbox scan and the archive (see the module docstring). A plate whose
    export is over ``max_bytes`` is not archived: it goes on from the drop folder, to be refused unread.
    ``stats``: the ``stat`` the scan took of the plates' files, by path (``stats_out`` of
    :func:`cr51.scan.scan`); a file not in it is statted here.

    Raises :class:`InboxShrunk` (nothing written) when the inbox lost too many accepted plates.
    """
    now = time.time() if now is None else now
    stats = stats or {}
    present = {file_name(f) for f in inbox.files}
    retractions = {r.plate: r for r in inbox.retractions}
    check_shrink(archive, inbox, present, retractions, min_share, confirm_cleanout)

    out = Scan(raw_dir=inbox.raw_dir, files=list(inbox.files), retractions=list(inbox.retractions))
    scan_rows = {o.file: o for o in inbox.others}
    for name, files in inbox.plates.items():
        if name in retractions:
            continue
        export = stats.get(files.export)
        if export is None:
            export = os.stat(files.export)
        if export.st_size > max_bytes:  # not archived: refused unread by its batch job
            out.plates[name] = replace(
                files, digest=content_digest([files.layout, *files.includes, files.export], max_bytes)
            )
            continue
        version = archive.admit(name, files.layout, files.export, files.includes, now, stats)
        archive.plates[name].missing_since = None
        archive.plates[name].cleanout_confirmed = False
        out.plates[name] = _plate(archive, name, version, batch_count, {})
    for name, record in archive.plates.items():
        if name in out.plates or name in retractions or not record.versions:
            continue
        current = record.versions[-1]
        notes: dict[str, tuple[str, str]] = {}
        gone = [f.name for f in (current.layout, current.export) if f.name not in present]
        if gone and record.missing_since is None:
            record.missing_since = iso(now)
        if not gone:
            record.missing_since = None
        for f in current.files()[:2]:
            if f.name not in present:
                notes[f.name] = (
                    "gone",
                    f"not in the drop folder since {record.missing_since}; plate {name} stays, computed from "
                    f"its archived version {current.version}",
                )
            elif f.name in scan_rows:  # a re-export still settling, or a layout the scan refused
                row = scan_rows[f.name]
                scan_rows[f.name] = replace(
                    row, plate=name, reason=f"{row.reason}; plate {name} keeps its accepted version {current.version}"
                )
                notes[f.name] = ("", "")  # the inbox row speaks for this file
        out.plates[name] = _plate(archive, name, current, batch_count, notes)
    for r in inbox.retractions:
        if r.plate in archive.plates or r.plate in inbox.plates:
            reason = f"plate {r.plate} retracted on {r.since}: {r.reason}"
            scan_rows[r.file] = FileStatus(r.file, "retracted", r.plate, reason)
            record = archive.plates.get(r.plate)
            names = {f.name for f in record.versions[-1].files()[:2]} if record and record.versions else set()
            if r.plate in inbox.plates:
                names |= {Path(inbox.plates[r.plate].layout).name, Path(inbox.plates[r.plate].export).name}
            for n in sorted(names & present):
                scan_rows[n] = FileStatus(n, "retracted", r.plate, reason)
        else:
            scan_rows[r.file] = FileStatus(
                r.file,
                "rejected",
                r.plate,
                f"no plate named '{r.plate}' to retract (the file's name must be <plate>.retract)",
            )
    out.others = [scan_rows[k] for k in sorted(scan_rows)]
    archive.save()
    return out


def _plate(
    archive: Archive, name: str, version: Version, batch_count: int, notes: dict[str, tuple[str, str]]
) -> PlateFiles:
    layout, export, includes = archive.lay_out(name, version)
    return PlateFiles(
        name=name,
        layout=layout,
        export=export,
        includes=includes,
        batch=batch_of(name, batch_count),
        digest=version_digest(name, version),
        version=version.version,
        shas=(version.layout.sha256, version.export.sha256),
        notes=tuple(sorted(notes.items())),
    )


def fallbacks(
    results_dir: str | os.PathLike, versions: dict[str, int]
) -> dict[str, tuple[int, str, str, tuple[str, ...]]]:
    """For the batch job: per plate whose ``versions[plate]`` is not its accepted version, the accepted
    version's files ``(version, layout, export, includes)``, kept if the new version is refused.

    Read when the job runs, not when the workflow is parsed: which version is accepted changes after
    the run that accepts it, and a batch parameter holding it would rerun the batch once more. A batch
    of first versions only has no earlier version to fall back to: the history (6 MB at 10,000 plates)
    is then not read.
    """
    if all(not v or v <= 1 for v in versions.values()):
        return {}
    accepted = accepted_versions(results_dir)
    wanted = {p: accepted[p] for p, v in versions.items() if p in accepted and v and accepted[p] != v}
    if not wanted:
        return {}
    archive = Archive(results_dir)
    out = {}
    for plate, fb in wanted.items():
        record = archive.plates.get(plate)
        version = next((v for v in record.versions if v.version == fb), None) if record else None
        if version is not None:
            out[plate] = (fb, *archive.lay_out(plate, version))
    return out


def shrunk(
    archive: Archive, raw_dir: str, present: set[str], retracted: set[str], min_share: float
) -> tuple[list[str], str]:
    """The accepted plates missing from the inbox, and the message when too many are (else "").

    A plate counts as still in the inbox when its layout or its export is there; plates retracted or
    whose clean-out was confirmed do not count.
    """
    active = {n: r for n, r in archive.plates.items() if r.versions and not r.cleanout_confirmed and n not in retracted}
    missing = [
        n
        for n, r in active.items()
        if r.versions[-1].layout.name not in present and r.versions[-1].export.name not in present
    ]
    if not missing:
        return [], ""
    share = 1 - len(missing) / len(active)
    if len(missing) < len(active) and share >= min_share:
        return missing, ""
    return missing, (
        f"the drop folder {raw_dir} holds {len(active) - len(missing)} of the {len(active)} accepted plates "
        f"(share {share:.0%}, inbox_min_share {min_share:.0%}): is the share mounted? Nothing was run and no "
        "result was changed. If the clean-out is real, run once with --config confirm_cleanout=True "
        "(the plates stay, computed from the archive)."
    )


def check_shrink(
    archive: Archive,
    inbox: Scan,
    present: set[str],
    retractions: dict[str, Retraction],
    min_share: float,
    confirm: bool,
) -> None:
    """Raise :class:`InboxShrunk` when the inbox lost too many of the accepted plates (:func:`shrunk`).
    With ``confirm`` the plates found gone are marked as a confirmed clean-out and no longer counted."""
    missing, message = shrunk(archive, inbox.raw_dir, present, set(retractions), min_share)
    if not message:
        return
    if not confirm:
        raise InboxShrunk(message)
    for n in missing:
        archive.plates[n].cleanout_confirmed = True


def inbox_check(raw_dir: str | os.PathLike, results_dir: str | os.PathLike, min_share: float, confirm: bool) -> str:
    """For the batch runner, before Snakemake starts: the message when the inbox lost too many accepted
    plates and the clean-out is not confirmed ("" otherwise). Reads the folder listing and the registry."""
    if confirm or not (Path(results_dir) / ARCHIVE / REGISTRY).exists():
        return ""
    raw = Path(raw_dir)
    present = {e.name for e in os.scandir(raw) if e.is_file(follow_symlinks=False)} if raw.is_dir() else set()
    retracted = {n[: -len(".retract")] for n in present if n.endswith(".retract")}
    return shrunk(Archive(results_dir), str(raw), present, retracted, min_share)[1]
