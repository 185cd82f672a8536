"""The sha256 of drop-folder files by what ``stat`` says of them, kept between runs (the scan's
second cache, ``results/.stat-cache.json``). Standard library only (parse time).

A run with nothing new used to read and hash every file of the drop folder twice (the layout for its
``[meta]``, every file as it was admitted into the archive): 20,000 files at 10,000 plates. A file
whose device, inode, size, modification time and change time (all in nanoseconds) are what they
were when its bytes were last hashed has those bytes still: a write changes the modification time,
and the change time — which no user can set back (``touch``, ``cp -p`` and ``rsync -t`` set the
modification time only) — moves with every write and every metadata change. As git does for its
index, an entry is kept only for a file whose times were already :data:`MARGIN_NS` in the past
when it was hashed, so that a write within the same timestamp tick (coarse clocks on some network
shares) can never leave the recorded times unchanged. Anything unexpected is a miss: the file is read.
"""

from __future__ import annotations

import json
import os
import time

from .digests import stat_identity

#: A file is recorded only if it was last modified (and changed) this long before it was hashed.
MARGIN_NS = 3_000_000_000
FORMAT = 1


class StatCache:
    """{path: sha256} of files whose ``stat`` identity is unchanged since they were hashed.

    :meth:`save` keeps the entries this run looked up or recorded only, so the file does not grow
    with files that left the drop folder. A missing or unreadable file is an empty cache.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
            files = data["files"] if data.get("format") == FORMAT else {}
            self._old: dict[str, list] = files if isinstance(files, dict) else {}
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            self._old = {}
        self._new: dict[str, list] = {}

    def known(self, path: str, st: os.stat_result) -> str | None:
        """The sha256 recorded for ``path`` if ``st`` (its stat now) is what it was then, else ``None``."""
        entry = self._old.get(path)
        if not isinstance(entry, list) or len(entry) != 6 or entry[:5] != stat_identity(st):
            return None
        sha = entry[5]
        if not (isinstance(sha, str) and len(sha) == 64):
            return None
        self._new[path] = entry
        return sha

    def record(self, path: str, st: os.stat_result, sha256: str, hashed_at_ns: int | None = None) -> None:
        """Remember that ``path``, whose stat before and after reading was ``st``, hashed to ``sha256``
        (at ``hashed_at_ns``, now by default); a file modified within :data:`MARGIN_NS` is not kept."""
        now = time.time_ns() if hashed_at_ns is None else hashed_at_ns
        if max(st.st_mtime_ns, st.st_ctime_ns) <= now - MARGIN_NS:
            self._new[path] = [*stat_identity(st), sha256]
        else:
            self._new.pop(path, None)

    def save(self) -> None:
        """Write the entries of this run, atomically, when they changed (a cache: a failed write is harmless)."""
        if self._new == self._old:
            return
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump({"format": FORMAT, "files": self._new}, fh, separators=(",", ":"))
            os.replace(tmp, self.path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
