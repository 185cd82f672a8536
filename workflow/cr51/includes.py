"""Layout includes: which names a layout may include, and where they are looked up. Standard library only.

``[meta] include`` entries must be bare file names (no folders, no ``..``, no absolute paths); each is
looked up in the drop folder first, then in the lab's template folder (``layouts_dir``); cycles are
refused. The scan (parse time) and the layout reader (batch job) resolve includes with the same rules.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path


class IncludeError(ValueError):
    """A layout's ``[meta] include`` is not allowed or cannot be found."""


def _include_names(meta: dict) -> list[str]:
    inc = meta.get("include", [])
    items = inc if isinstance(inc, list) else [inc]
    names = []
    for item in items:
        name = item.get("path") if isinstance(item, dict) else item
        if not isinstance(name, str):
            raise IncludeError(f"[meta] include entry {item!r} is not a file name")
        names.append(name)
    return names


def check_include_name(name: str) -> None:
    """Refuse include names that could reach outside the allowed folders."""
    if (
        not name
        or "/" in name
        or "\\" in name
        or name in (".", "..")
        or os.path.isabs(name)
        or name.startswith("~")
        or ":" in name
    ):
        raise IncludeError(
            f"[meta] include '{name}' is not a bare file name: includes may only name a "
            "template in the drop folder or in the lab's layout templates folder"
        )


def resolve_includes(
    layout: Path,
    search_dirs: list[Path],
    _seen: frozenset[Path] = frozenset(),
    meta: dict | None = None,
) -> list[Path]:
    """Resolve a layout's includes (recursively) to template paths.

    Each include must be a bare file name; it is looked for in ``search_dirs`` in order.
    ``meta`` is the layout's ``[meta]`` table when the caller has already parsed it.
    Raises :class:`IncludeError` for a disallowed name, a missing template or a cycle,
    and :class:`tomllib.TOMLDecodeError` for a template that is not TOML.
    """
    if meta is None:
        with open(layout, "rb") as fh:
            meta = tomllib.load(fh).get("meta", {})
    found: list[Path] = []
    for name in _include_names(meta):
        check_include_name(name)
        for d in search_dirs:
            cand = d / name
            if cand.is_file():
                break
        else:
            raise IncludeError(f"[meta] include '{name}' not found in " + " or ".join(f"'{d}'" for d in search_dirs))
        real = cand.resolve()
        if real in _seen or real == layout.resolve():
            raise IncludeError(f"[meta] include '{name}' includes itself")
        found.append(cand)
        found.extend(resolve_includes(cand, search_dirs, _seen | {real}))
    return found
