"""Scan the drop folder: which files form which plate, which wait, which are refused.

Runs when Snakemake parses the workflow, so it uses the standard library only (no pandas)
and reads nothing but the layouts' ``[meta]`` tables and the folder listing.

Rules (documented for users in ``config/README.md``):

* A *plate* is a ``*.toml`` layout whose ``[meta] path`` names a counter export in the same
  folder; the plate's name is the layout's file stem.
* ``[meta] include`` entries must be bare file names; they are looked up in the drop folder
  first, then in the lab's template folder (``layouts_dir``). Anything else (absolute paths,
  ``..``, sub-folders) refuses the plate.
* A file modified less than ``settle_seconds`` ago is *pending* (it may still be being written).
* An export that no layout names is *pending*; a layout whose export is not there yet is
  *pending*.
* ``README.md`` is not plate data and is not listed. Hidden files (``.*``), sub-folders, links and
  special files (FIFOs, devices, sockets) are never opened: they are listed as *ignored* with the reason.
* ``<plate>.retract`` (a small text file whose content is the reason) retracts a plate (see
  :mod:`cr51.archive`).
* A pending file older than ``stale_seconds`` is *stale*; a layout waiting for an export that is not
  there gets the closest unclaimed file name as a suggestion ("did you mean …?").
* A file whose name is not UTF-8, holds a control character or an invisible bidirectional control
  (U+202A-U+202E, U+2066-U+2069, U+200E/F: a name that displays as another), or holds ``{`` or ``}``
  (which Snakemake reads as a wildcard pattern: one such name would stop the whole run) is refused.
* Names are matched in Unicode NFC: a ``[meta] path`` finds its export whether either name is typed in
  NFC or NFD. Of two files whose names differ only by normalisation (they look the same) the one not in
  NFC is refused with a reason naming the other.
* Layouts and templates are read within bounds and confined to the drop folder and ``layouts_dir``
  (:mod:`cr51.includes`); any failure to read or parse one, of whatever kind, is that layout's
  ``rejected`` reason, never a failure of the scan.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import time
import unicodedata
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from .digests import content_digest
from .includes import (
    MAX_LAYOUT_BYTES,
    IncludeError,
    LayoutFileError,
    Resolver,
    check_include_name,
    check_meta,
    excerpt,
    read_toml,
)
from .metacache import MetaCache
from .statcache import StatCache

IGNORED_NAMES = frozenset({"README.md"})
LAYOUT_SUFFIX = ".toml"
RETRACT_SUFFIX = ".retract"
#: A retraction's reason is read from at most this many bytes of its file.
MAX_RETRACT_BYTES = 4096
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Invisible bidirectional controls: embeddings and overrides, isolates, the LRM/RLM marks.
BIDI = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f]")
#: Every character :func:`unusable_name` refuses a name for (surrogates: what UTF-8 cannot encode), in
#: one pattern: a name without any is usable without running the checks one by one.
_SUSPECT = re.compile("[\x00-\x1f\x7f{}\u202a-\u202e\u2066-\u2069\u200e\u200f\ud800-\udfff]")


@dataclass(frozen=True)
class FileStatus:
    """A drop-folder file that is not (or not yet) part of an accepted plate."""

    file: str
    status: str  # see cr51.schema.FILE_STATUSES
    plate: str
    reason: str


@dataclass(frozen=True)
class Retraction:
    """A ``<plate>.retract`` file: the plate it takes out, why, and when it was written."""

    file: str
    plate: str
    reason: str
    since: str


@dataclass(frozen=True)
class PlateFiles:
    """The files that make up one plate."""

    name: str
    layout: str  # path of the layout file
    export: str  # path of the counter export
    includes: tuple[str, ...]  # resolved paths of included templates
    batch: str
    digest: str = ""  # sha256 of the plate's file contents (see content_digest)
    version: int = 0  # the archived version these files are (cr51.archive; 0: straight from the inbox)
    shas: tuple[str, str] = ("", "")  # sha256 of the layout and export as archived ("" when not archived)
    #: files.csv status and reason for some of the plate's files ({name: (status, reason)}; status "":
    #: the drop folder's own row for that name speaks for it)
    notes: tuple[tuple[str, tuple[str, str]], ...] = ()


@dataclass
class Scan:
    """Result of scanning a drop folder."""

    raw_dir: str
    plates: dict[str, PlateFiles] = field(default_factory=dict)
    others: list[FileStatus] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # every listed file (paths)
    retractions: list[Retraction] = field(default_factory=list)

    def batches(self) -> list[str]:
        """Sorted ids of the batches that hold at least one plate."""
        return sorted({p.batch for p in self.plates.values()})

    def plates_in(self, batch: str) -> list[PlateFiles]:
        """The plates of one batch, sorted by name."""
        return sorted((p for p in self.plates.values() if p.batch == batch), key=lambda p: p.name)

    def by_batch(self) -> dict[str, list[PlateFiles]]:
        """{batch: :meth:`plates_in` of it} for every batch that holds plates, in one pass over the plates."""
        out: dict[str, list[PlateFiles]] = {}
        for p in sorted(self.plates.values(), key=lambda p: p.name):
            out.setdefault(p.batch, []).append(p)
        return out

    def unassigned_files(self) -> list[str]:
        """Listed files (usable names only) that belong to no plate: pending, refused, templates."""
        in_plates = {file_name(f) for p in self.plates.values() for f in (p.layout, p.export)}
        return [f for f in self.files if file_name(f) not in in_plates]


def file_name(path: str) -> str:
    """``Path(path).name`` without building a :class:`~pathlib.Path` (a run takes the name of 40,000 paths):
    the text after the last ``/``, unless that is empty or ``.``, which pathlib normalises away."""
    name = path.rpartition("/")[2]
    return name if name and name != "." else Path(path).name


def child_prefix(folder: Path) -> str:
    """What :func:`str` of ``folder / name`` puts before a plain file ``name`` (a directory entry's name:
    no ``/``): ``""`` for ``.``, else the folder and one ``/``, so that ``child_prefix(folder) + name ==
    str(folder / name)`` without building a :class:`~pathlib.Path` per file."""
    text = str(folder)
    if text == ".":
        return ""
    return text if text.endswith("/") else text + "/"


def batch_of(plate: str, batch_count: int) -> str:
    """Stable batch id of a plate: depends on the plate's name only (its sha256 as a number, modulo
    ``batch_count``)."""
    digest = hashlib.sha256(plate.encode("utf-8", "surrogateescape")).digest()
    return f"b{int.from_bytes(digest, 'big') % batch_count:03d}"


def unusable_name(name: str) -> str | None:
    """Why the pipeline cannot use a file named ``name`` (``None`` if it can)."""
    if not _SUSPECT.search(name):
        return None
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "the file name is not valid UTF-8 text; rename the file"
    if _CONTROL.search(name):
        return "the file name holds a control character (e.g. a line break); rename the file"
    if "{" in name or "}" in name:
        return "the file name holds '{' or '}', which the workflow cannot use; rename the file"
    if m := BIDI.search(name):
        return (
            f"the file name holds an invisible bidirectional control character (U+{ord(m.group()):04X}), which "
            "can make a name display as another; rename the file"
        )
    return None


def display_name(name: str) -> str:
    """``name`` as printable UTF-8 text (undecodable bytes shown as ``\\xNN``, bidirectional controls as
    ``\\u202e``: they never reach files.csv or the report as themselves)."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return BIDI.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def nfc(name: str) -> str:
    """``name`` in Unicode normal form C (names are matched in it)."""
    return unicodedata.normalize("NFC", name)


def lookalikes(names: list[str]) -> dict[str, str]:
    """{name: the name it is refused for} for names that differ from another only by Unicode
    normalisation: of each such group the NFC form is kept (else the first), the others are refused."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(nfc(name), []).append(name)
    out = {}
    for key, group in groups.items():
        keep = key if key in group else group[0]
        out.update({n: keep for n in group if n != keep})
    return out


def scan(
    raw_dir: str | os.PathLike,
    *,
    layouts_dir: str | os.PathLike,
    batch_count: int,
    settle_seconds: float,
    now: float | None = None,
    max_bytes: int = 20_000_000,
    max_layout_bytes: int = MAX_LAYOUT_BYTES,
    meta_cache: str | os.PathLike | None = None,
    stale_seconds: float = float("inf"),
    accepted_layouts: frozenset[str] = frozenset(),
    digests: bool = True,
    stat_cache: StatCache | None = None,
    stats_out: dict[str, os.stat_result] | None = None,
) -> Scan:
    """Classify the files of the drop folder ``raw_dir`` (top level only); ``meta_cache``: a
    :class:`MetaCache` file; ``accepted_layouts``: layout names of plates the archive already holds
    (a new layout naming one of their exports is refused, the accepted plate keeps it); ``digests``:
    compute each plate's content digest (reads every byte; :mod:`cr51.archive` digests what it archives);
    ``max_layout_bytes``: layouts and templates larger than this are refused unread; ``stat_cache``:
    sha256 of unchanged files (:mod:`cr51.statcache`), so that a layout whose ``[meta]`` the meta cache
    holds is not read; ``stats_out``: filled with the ``stat`` the scan took of each plate's layout and
    export (by their paths in the plates), the one its settling was judged by (:func:`cr51.archive.admit`
    archives the files by it instead of taking another)."""
    raw = Path(raw_dir)
    result = Scan(raw_dir=str(raw))
    if not raw.is_dir():
        return result
    cache = MetaCache(meta_cache) if meta_cache is not None else None
    now = time.time() if now is None else now
    listing = sorted(os.scandir(raw), key=lambda e: e.name)
    ignored: dict[str, str] = {}
    unusable: dict[str, str] = {}
    entries = []
    for e in listing:
        if e.name in IGNORED_NAMES:
            continue
        if why := ignored_entry(e):
            ignored[e.name] = why
        elif why := unusable_name(e.name):
            unusable[e.name] = why
        else:
            entries.append(e)
    twins = lookalikes([e.name for e in entries])
    if twins:
        entries = [e for e in entries if e.name not in twins]
    retract = [e for e in entries if e.name.endswith(RETRACT_SUFFIX)]
    result.retractions = [read_retraction(e) for e in retract]
    entries = [e for e in entries if not e.name.endswith(RETRACT_SUFFIX)]
    by_name = {e.name: e for e in entries}
    by_nfc = {nfc(n): n for n in by_name}  # unique: look-alike names were refused above
    ignored_nfc = {nfc(n): why for n, why in ignored.items()}

    def actual(path: str) -> str:
        """The drop folder's name for the file ``[meta] path`` names (matched in NFC), else ``path``."""
        return path if path in by_name else by_nfc.get(nfc(path), path)

    prefix = child_prefix(raw)  # prefix + name == str(raw / name)
    result.files = [prefix + e.name for e in entries]

    def settled(name: str) -> bool:
        return now - by_name[name].stat().st_mtime >= settle_seconds

    def wait_reason(name: str) -> str:
        age = now - by_name[name].stat().st_mtime
        return (
            f"'{name}' was modified {age:.0f} s ago; it is left for a later run in case "
            f"it is still being written (settle_seconds = {settle_seconds:g})"
        )

    claimed: dict[str, list[str]] = {}  # export name -> layouts naming it
    layout_meta: dict[str, dict] = {}
    statuses: dict[str, FileStatus] = {}
    resolver = Resolver([raw, Path(layouts_dir)], max_layout_bytes)  # each template read once per scan
    includes_of: dict[str, list[Path]] = {}
    included: set[str] = set()
    plate_names: dict[str, tuple[str, str]] = {}  # plate -> the drop folder's names of its layout and export

    for e in entries:
        if not e.name.lower().endswith(LAYOUT_SUFFIX):
            continue
        plate = e.name[: -len(LAYOUT_SUFFIX)]
        try:
            if cache is not None:
                st = e.stat() if stat_cache is not None else None
                known = stat_cache.known(e.path, st) if st is not None and st.st_size <= max_layout_bytes else None
                meta = cache.meta(e.path, max_layout_bytes, known)
            else:
                meta = read_toml(e.path, max_layout_bytes).get("meta", {})
            meta = check_meta(meta)
        except LayoutFileError as err:
            statuses[e.name] = FileStatus(e.name, "rejected", plate, str(err))
            continue
        except Exception as err:  # noqa: BLE001 - whatever a file does to a reader, it is that file's reason
            statuses[e.name] = FileStatus(
                e.name, "rejected", plate, f"the layout could not be read ({type(err).__name__})"
            )
            continue
        path = meta.get("path")
        if isinstance(path, str) and path:
            path = actual(path)
            meta = {**meta, "path": path}
            claimed.setdefault(path, []).append(e.name)
        try:
            incs = resolver.resolve(Path(e.path), meta) if "include" in meta else []  # resolve's own shortcut
        except LayoutFileError as err:
            statuses[e.name] = FileStatus(e.name, "rejected", plate, str(err))
            continue
        except Exception as err:  # noqa: BLE001 - as above: the layout's reason, never the scan's failure
            reason = f"its templates could not be read ({type(err).__name__})"
            statuses[e.name] = FileStatus(e.name, "rejected", plate, reason)
            continue
        includes_of[e.name] = incs
        included.update(p.name for p in incs if p.parent.resolve() == raw.resolve())
        if path is None:
            layout_meta[e.name] = meta  # a template, or a layout without export: decided below
            continue
        if not isinstance(path, str) or not path:
            statuses[e.name] = FileStatus(e.name, "rejected", plate, "[meta] path must be the export's file name")
            continue
        try:
            check_include_name(path)
        except IncludeError:
            statuses[e.name] = FileStatus(
                e.name,
                "rejected",
                plate,
                f"[meta] path '{display_name(excerpt(path))}' must be a file name in the same folder as the layout",
            )
            continue
        if why := unusable_name(path):
            statuses[e.name] = FileStatus(e.name, "rejected", plate, f"[meta] path '{display_name(path)}': {why}")
            continue
        layout_meta[e.name] = meta

    for layout_name, meta in layout_meta.items():
        plate = layout_name[: -len(LAYOUT_SUFFIX)]
        path = meta.get("path")
        if path is None:
            if layout_name in included:
                statuses[layout_name] = FileStatus(layout_name, "ok", "", "layout template included by another layout")
            else:
                statuses[layout_name] = FileStatus(
                    layout_name,
                    "rejected",
                    plate,
                    'layout names no counter export: add [meta] path = "<export file>"',
                )
            continue
        owners = claimed[path]
        if len(owners) > 1 and any(o in accepted_layouts for o in owners) and layout_name not in accepted_layouts:
            holder = next(o for o in owners if o in accepted_layouts)
            statuses[layout_name] = FileStatus(
                layout_name,
                "rejected",
                plate,
                f"export '{path}' already belongs to the accepted plate of layout '{holder}'; that plate stays "
                "as it is. Name this plate's own export in [meta] path",
            )
            continue
        owners = [o for o in owners if o in accepted_layouts] or owners
        if len(owners) > 1:
            statuses[layout_name] = FileStatus(
                layout_name,
                "rejected",
                plate,
                f"export '{path}' is named by several layouts: " + ", ".join(owners),
            )
            continue
        if path not in by_name and nfc(path) in ignored_nfc:
            why = ignored_nfc[nfc(path)]
            statuses[layout_name] = FileStatus(
                layout_name,
                "rejected",
                plate,
                f"[meta] path '{display_name(path)}' names a file that is not read: {why}",
            )
            continue
        if path not in by_name:
            hint = suggestion(path, [n for n in by_name if n not in claimed and not n.lower().endswith(LAYOUT_SUFFIX)])
            statuses[layout_name] = FileStatus(layout_name, "pending", plate, f"waiting for its export '{path}'{hint}")
            continue
        if path.lower().endswith(LAYOUT_SUFFIX):
            statuses[layout_name] = FileStatus(layout_name, "rejected", plate, f"[meta] path '{path}' names a layout")
            continue
        unsettled = [n for n in (layout_name, path) if not settled(n)]
        if unsettled:
            for n in (layout_name, path):
                statuses[n] = FileStatus(n, "pending", plate, wait_reason(unsettled[0]))
            continue
        files = PlateFiles(
            name=plate,
            layout=prefix + layout_name,
            export=prefix + path,
            includes=tuple(str(p) for p in includes_of[layout_name]),
            batch=batch_of(plate, batch_count),
        )
        if digests:
            files = replace(files, digest=content_digest([files.layout, *files.includes, files.export], max_bytes))
        result.plates[plate] = files
        plate_names[plate] = (layout_name, path)

    if cache is not None:
        cache.save()
    # the names of the plates kept (of two layouts of one plate name, "P.toml" and "P.TOML": the last one's)
    in_plates = {n for names in plate_names.values() for n in names}
    if stats_out is not None:
        for files in result.plates.values():
            layout_name, export_name = plate_names[files.name]
            stats_out[files.layout] = by_name[layout_name].stat()  # taken by settled(): no system call
            stats_out[files.export] = by_name[export_name].stat()
    for name, why in unusable.items():
        result.others.append(FileStatus(display_name(name) if BIDI.search(name) else name, "rejected", "", why))
    for name, twin in twins.items():
        reason = (
            f"'{display_name(name)}' differs from '{display_name(twin)}' only by Unicode normalisation (NFC/NFD): "
            "the two names look the same, so this one is not used; rename or remove one of them"
        )
        result.others.append(FileStatus(display_name(name), "rejected", "", reason))
    for name, why in ignored.items():
        result.others.append(FileStatus(display_name(name), "ignored", "", why))
    for e in entries:
        if e.name in in_plates:
            continue
        if e.name in statuses:
            result.others.append(statuses[e.name])
        elif e.name in claimed:
            # export of a pending or rejected layout
            owner = claimed[e.name][0]
            st = statuses.get(owner)
            plate = owner[: -len(LAYOUT_SUFFIX)]
            if st is not None and st.status == "rejected":
                result.others.append(FileStatus(e.name, "rejected", plate, f"its layout was refused: {st.reason}"))
            else:
                result.others.append(FileStatus(e.name, "pending", plate, st.reason if st else ""))
        else:
            result.others.append(
                FileStatus(
                    e.name,
                    "pending",
                    "",
                    "no layout names this file yet (a plate needs a *.toml layout whose [meta] path names it)",
                )
            )
    result.others = [stale(o, by_name, now, stale_seconds) for o in result.others]
    return result


def ignored_entry(entry: os.DirEntry) -> str | None:
    """Why a drop-folder entry is not read at all (``None`` for a regular, visible file)."""
    if entry.is_symlink():
        return "a symbolic link: links are not followed (copy the file itself into the drop folder)"
    if entry.is_dir(follow_symlinks=False):
        return "a sub-folder: only the drop folder's top level is read (move the files up)"
    if not entry.is_file(follow_symlinks=False):
        return "not a regular file (a FIFO, device or socket): never opened"
    if entry.name.startswith("."):
        return "a hidden file (its name starts with '.'): not plate data"
    return None


def read_retraction(entry: os.DirEntry) -> Retraction:
    """The plate a ``<plate>.retract`` file retracts, its reason (the file's text) and its date."""
    with open(entry.path, "rb") as fh:
        text = fh.read(MAX_RETRACT_BYTES).decode("utf-8", "replace")
    reason = " ".join(text.split())[:500] or "no reason given"
    since = datetime.fromtimestamp(entry.stat().st_mtime, UTC).isoformat(timespec="seconds")
    return Retraction(entry.name, entry.name[: -len(RETRACT_SUFFIX)], reason, since)


def suggestion(name: str, candidates: list[str]) -> str:
    """`` — did you mean 'X'?`` for the candidate equal up to case or a small edit, else ``""``."""
    same_case = [c for c in candidates if c.lower() == name.lower()]
    close = same_case or difflib.get_close_matches(name, candidates, n=1, cutoff=0.8)
    return f" — did you mean '{close[0]}'? (names must match exactly, case included)" if close else ""


def stale(row: FileStatus, by_name: dict[str, os.DirEntry], now: float, stale_seconds: float) -> FileStatus:
    """A pending row whose file has waited longer than ``stale_seconds`` becomes ``stale``."""
    entry = by_name.get(row.file)
    if row.status != "pending" or entry is None:
        return row
    age = now - entry.stat().st_mtime
    if age <= stale_seconds:
        return row
    return replace(row, status="stale", reason=f"{row.reason} (waiting for {age / 3600:.0f} h: check this file)")
