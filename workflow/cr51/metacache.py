"""The layouts' ``[meta]`` tables kept between runs by the sha256 of the layout's bytes (the scan's cache).
Standard library only."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .includes import MAX_LAYOUT_BYTES, parse_toml, read_bytes

#: Part of every key: entries kept by code that read layouts with other bounds are not used.
KEY_SALT = b"cr51-meta-3\n"


def _key(sha256: str) -> str:
    return hashlib.sha256(KEY_SALT + sha256.encode()).hexdigest()


class MetaCache:
    """The ``[meta]`` tables of layouts by the sha256 of the layout's bytes, kept in a JSON file
    between runs: parsing every layout's whole TOML was most of a run with nothing new to do.

    Keyed by content, so a changed layout is parsed again; only tables that survive a JSON round
    trip unchanged are kept (TOML dates, for instance, are not). A missing or unreadable file is
    an empty cache. :meth:`save` keeps the entries of this scan only, so the file does not grow.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            loaded = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            loaded = {}
        self._old: dict = loaded if isinstance(loaded, dict) else {}
        self._new: dict = {}

    def meta(self, path: str | os.PathLike, max_bytes: int = MAX_LAYOUT_BYTES, sha256: str | None = None) -> object:
        """The layout's ``[meta]`` (``{}`` if none), read and parsed within the bounds of
        :mod:`cr51.includes` (at most ``max_bytes`` read); raises :class:`cr51.includes.LayoutFileError`.
        ``sha256``: the sha256 of the layout's bytes where it is known (:mod:`cr51.statcache`; the caller
        checked its size against ``max_bytes``): a layout kept here is then not read at all."""
        if sha256 is not None and (key := _key(sha256)) in self._old:
            meta = self._old[key]
            self._new[key] = meta
            return meta
        data = read_bytes(path, max_bytes, "the layout")
        key = _key(hashlib.sha256(data).hexdigest())
        if key in self._old:
            meta = self._old[key]
        else:
            meta = parse_toml(data, "the layout").get("meta", {})
            try:
                if json.loads(json.dumps(meta)) != meta:
                    return meta
            except (TypeError, ValueError):
                return meta
        self._new[key] = meta
        return meta

    def save(self) -> None:
        """Write the entries this scan used, atomically (a cache: failing to write is harmless)."""
        if self._new == self._old:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self._new), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError:
            pass
