"""Layout files read within bounds, and their includes. Standard library only.

A layout (or a template it includes) is hostile until proven otherwise: every TOML file is read by
:func:`read_toml`, which refuses, **before** :mod:`tomllib` sees it, a file that is not a regular file
(a FIFO, a device: never opened for reading), larger than ``max_bytes`` (config ``max_layout_bytes``),
nested deeper than :data:`MAX_DEPTH` or with a dotted key of more than :data:`MAX_KEY_PARTS` parts
(tomllib's time and memory grow with the square of a key's parts), and, after parsing, one with more
than :data:`MAX_KEYS` keys and values. Any failure of the parser itself (``RecursionError``,
``MemoryError``, anything) becomes a :class:`LayoutFileError` with the reason.

``[meta]`` may only hold the documented keys ``path`` and ``include`` (:data:`META_KEYS`): wellmap's
``concat`` takes any absolute path (``/dev/zero``, a FIFO, another lab's layout), ``paths``, ``alert``
and ``style`` are not part of the lab's layout format. ``[meta] include`` entries must be bare file
names (no folders, no ``..``, no absolute paths); each is looked up in the drop folder first, then in the
lab's template folder (``layouts_dir``), and must lie inside the folder it was found in **after resolving
symbolic links**: a template that is a link to a file elsewhere is refused unread, with one reason
whether or not its target exists. Each template is read once (:class:`Resolver`); cycles, more than
:data:`MAX_INCLUDES` template reads (wellmap reads a template once per path that includes it) and
includes nested deeper than :data:`MAX_INCLUDE_DEPTH` are refused. The scan (parse time) and the layout
reader (batch job) use the same rules.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from pathlib import Path

#: The default of config ``max_layout_bytes`` (the schema's; tests/test_hostile_inputs.py holds them equal).
MAX_LAYOUT_BYTES = 1_000_000
#: Brackets (arrays, inline tables, table headers) nested deeper than this, or tables nested deeper
#: than this by dotted keys, refuse a layout (a real one nests 3-4 deep).
MAX_DEPTH = 16
#: A dotted key (``a.b.c``, in a table header or before ``=``) of more parts than this refuses a layout.
MAX_KEY_PARTS = 8
#: More keys and values than this (all tables and arrays together) refuse a layout (96 wells with
#: a dozen fields each is ~1,200).
MAX_KEYS = 10_000
#: The ``[meta]`` keys a layout may use (wellmap's others are refused: see the module docstring).
META_KEYS = ("path", "include")
#: Keys of an include given as a table (``include = [{path = "t.toml", shift = "A1 to B1"}]``, wellmap's form).
INCLUDE_KEYS = ("path", "shift")
#: At most this many template reads per layout, counting a template once per path that includes it.
MAX_INCLUDES = 32
#: At most this many levels of templates including templates.
MAX_INCLUDE_DEPTH = 4
#: Text a reason quotes from a file is cut to this many characters.
EXCERPT_CHARS = 60


class LayoutFileError(ValueError):
    """A layout or template file that cannot be used as it is; ``str(exc)`` says why."""


class IncludeError(LayoutFileError):
    """A layout's ``[meta] include`` is not allowed or cannot be found."""


def excerpt(text: object, limit: int = EXCERPT_CHARS) -> str:
    """``repr``-free short form of ``text`` for a reason: at most ``limit`` characters, then ``…`` and the length."""
    s = str(text)
    if len(s) <= limit:
        return s
    return f"{s[:limit]}… ({len(s):,} characters)"


# --------------------------------------------------------------------------------------------
# bounded TOML

_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_KEY_PART = r"(?:[A-Za-z0-9_-]+|\"\"|'')"  # a bare key, or a quoted one emptied by skeleton()
_DOTTED_KEY = re.compile(_KEY_PART + r"(?:[ \t]*\.[ \t]*" + _KEY_PART + r"){" + str(MAX_KEY_PARTS) + ",}")


#: A TOML string (multi-line basic and literal first, then single-line; one that does not end runs to the
#: end of its line, or of the text for a multi-line one) or a comment.
_STRING_OR_COMMENT = re.compile(
    r'"""(?:[^"\\]|\\[\s\S]|"(?!""))*"""(?:"{1,2}(?!"))?|"""[\s\S]*'
    r"|'''[\s\S]*?'''(?:'{1,2}(?!'))?|'''[\s\S]*"
    r'|"(?:[^"\\\n]|\\.)*"|"[^\n]*'
    r"|'[^'\n]*'|'[^\n]*"
    r"|#[^\n]*"
)


def _emptied(m: re.Match[str]) -> str:
    tok = m.group()
    return "" if tok[0] == "#" else tok[0] * 2


def skeleton(text: str) -> str:
    """``text`` with every string's content and every comment removed (``"..."`` becomes ``""``): what is
    left are the keys, brackets and bare values whose shape :func:`check_shape` bounds. A string that does
    not end runs to the end of its line (tomllib then reports the error)."""
    return _STRING_OR_COMMENT.sub(_emptied, text)


def check_shape(text: str, what: str) -> None:
    """Refuse TOML text nested deeper than :data:`MAX_DEPTH` or with a dotted key of more than
    :data:`MAX_KEY_PARTS` parts, before it is parsed (both cost the parser far more than their bytes)."""
    bare = skeleton(text)
    depth = deepest = 0
    for ch in _NOT_BRACKET.sub("", bare):
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(depth - 1, 0)
    if deepest > MAX_DEPTH:
        raise LayoutFileError(f"{what} nests arrays or tables more than {MAX_DEPTH} deep: not a plate layout")
    if m := _DOTTED_KEY.search(bare):
        raise LayoutFileError(
            f"{what} has a dotted key of more than {MAX_KEY_PARTS} parts ('{excerpt(m.group(), 40)}'): "
            "not a plate layout"
        )


def check_tree(doc: dict, what: str) -> None:
    """Refuse a parsed document with more than :data:`MAX_KEYS` keys and values or tables nested
    deeper than :data:`MAX_DEPTH` (iteratively: nothing here recurses)."""
    count = 0
    stack: list[tuple[object, int]] = [(doc, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise LayoutFileError(f"{what} nests tables more than {MAX_DEPTH} deep: not a plate layout")
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        for child in children:
            count += 1
            if count > MAX_KEYS:
                raise LayoutFileError(f"{what} has more than {MAX_KEYS:,} keys and values: not a plate layout")
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))


def read_bytes(path: str | os.PathLike, max_bytes: int, what: str) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` of them; :class:`LayoutFileError`
    for anything else. A FIFO, device or directory is refused without being opened for reading (opened
    non-blocking and checked with ``fstat``, so a file swapped for a FIFO cannot hang the read either)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise LayoutFileError(f"{what} is not a regular file (a FIFO, device or folder): not read")
        if st.st_size > max_bytes:
            raise LayoutFileError(
                f"{what} is {st.st_size:,} bytes, more than the limit of {max_bytes:,} (config max_layout_bytes): "
                "not a plate layout"
            )
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise LayoutFileError(f"{what} is not a regular file (a FIFO, device or folder): not read")
            with os.fdopen(fd, "rb", closefd=False) as fh:
                data = fh.read(min(st.st_size, max_bytes) + 1)  # a file grown since stat() is caught below
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise LayoutFileError(f"{what} is not there (removed while it was read?)") from None
    except OSError as err:
        raise LayoutFileError(f"{what} cannot be read ({err.strerror})") from None
    if len(data) > st.st_size:
        raise LayoutFileError(f"{what} grew while it was read (still being written?)")
    return data


def parse_toml(data: bytes, what: str) -> dict:
    """The TOML document in ``data``, within the bounds of the module docstring. Every failure, the
    parser's included (``RecursionError``, ``MemoryError``: any exception), is a :class:`LayoutFileError`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise LayoutFileError(f"{what} is not valid TOML: not UTF-8 text ({err.reason} at byte {err.start})") from None
    check_shape(text, what)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise LayoutFileError(f"{what} is not valid TOML: {excerpt(err, 200)}") from None
    except Exception as err:  # noqa: BLE001 - RecursionError, MemoryError, a parser bug: the file's reason
        raise LayoutFileError(f"{what} could not be parsed ({type(err).__name__}): not a plate layout") from None
    check_tree(doc, what)
    return doc


def read_toml(path: str | os.PathLike, max_bytes: int = MAX_LAYOUT_BYTES, what: str = "the layout") -> dict:
    """:func:`parse_toml` of :func:`read_bytes`."""
    return parse_toml(read_bytes(path, max_bytes, what), what)


def check_meta(meta: object, what: str = "the layout") -> dict:
    """``meta`` if it is a table holding only :data:`META_KEYS`; :class:`LayoutFileError` otherwise."""
    if not isinstance(meta, dict):
        raise LayoutFileError("[meta] must be a table")
    other = [k for k in meta if k not in META_KEYS]
    if other:
        raise LayoutFileError(
            f"[meta] {excerpt(other[0], 40)} is not allowed in {what}: [meta] may only give path (the export) "
            "and include (templates); wellmap's other [meta] keys (concat, paths, alert, style) would read files "
            "outside the drop folder or are not part of the lab's layouts"
        )
    return meta


# --------------------------------------------------------------------------------------------
# includes


def _include_names(meta: dict) -> list[str]:
    inc = meta.get("include", [])
    items = inc if isinstance(inc, list) else [inc]
    names = []
    for item in items:
        if isinstance(item, dict):
            other = [k for k in item if k not in INCLUDE_KEYS]
            if other:
                raise IncludeError(
                    f"[meta] include entry key {excerpt(other[0], 40)} is not allowed (only path, shift)"
                )
        name = item.get("path") if isinstance(item, dict) else item
        if not isinstance(name, str):
            raise IncludeError(f"[meta] include entry {excerpt(repr(item))} is not a file name")
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
        or "\x00" in name
    ):
        raise IncludeError(
            f"[meta] include '{excerpt(name)}' is not a bare file name: includes may only name a "
            "template in the drop folder or in the lab's layout templates folder"
        )


def _inside(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:
        return False


class Resolver:
    """Finds and reads templates: each one once (by its resolved path), confined to ``search_dirs``.

    ``texts`` keeps the bytes read for each template (by the path returned) and ``docs`` their parsed
    documents, so a caller can use exactly the bytes that were checked.
    """

    def __init__(self, search_dirs: list[Path], max_bytes: int = MAX_LAYOUT_BYTES) -> None:
        self.search_dirs = [Path(d) for d in search_dirs]
        self.max_bytes = max_bytes
        self.texts: dict[Path, bytes] = {}
        self.docs: dict[Path, dict] = {}  # the parsed documents of ``texts``
        self._docs: dict[str, tuple[Path, dict]] = {}  # resolved path -> (path found, document)
        #: resolved path -> (template reads wellmap makes from it, itself included; levels; templates, itself first)
        self._memo: dict[str, tuple[int, int, list[Path]]] = {}

    def find(self, name: str) -> tuple[Path, str]:
        """(the path of template ``name`` in the first search folder that has it, its resolved path)."""
        check_include_name(name)
        for d in self.search_dirs:
            cand = d / name
            try:
                os.lstat(cand)
            except FileNotFoundError:
                continue
            except OSError as err:
                raise IncludeError(f"[meta] include '{excerpt(name)}' cannot be read ({err.strerror})") from None
            real = os.path.realpath(cand)
            if not _inside(real, os.path.realpath(d)):
                # the same words whether or not the link's target exists: nothing outside is revealed
                raise IncludeError(
                    f"[meta] include '{excerpt(name)}' is a link to a file outside the drop folder and the "
                    "templates folder: not read (copy the template itself there)"
                )
            return cand, real
        raise IncludeError(f"[meta] include '{excerpt(name)}' not found in the drop folder or the templates folder")

    def document(self, cand: Path, real: str, name: str) -> dict:
        if real not in self._docs:
            what = f"the included template '{excerpt(name)}'"
            data = read_bytes(real, self.max_bytes, what)
            doc = parse_toml(data, what)
            check_meta(doc.get("meta", {}), what)
            self._docs[real] = (cand, doc)
            self.texts[cand] = data
            self.docs[cand] = doc
        return self._docs[real][1]

    def resolve(self, layout: Path, meta: dict) -> list[Path]:
        """The templates ``layout`` (whose ``[meta]`` is ``meta``) includes, directly or not, each once,
        in the order wellmap meets them first; :class:`IncludeError` (or :class:`LayoutFileError` for a
        template that is not a usable TOML file) otherwise."""
        if "include" not in meta:
            return []
        _, _, below = self._walk(meta, (os.path.realpath(layout),))
        return list(dict.fromkeys(below))

    def _walk(self, meta: dict, chain: tuple[str, ...]) -> tuple[int, int, list[Path]]:
        """(template reads, levels, templates) below the file ending ``chain``; each template is read and
        walked once (memoised by resolved path), so a fan-out costs its distinct templates, not its paths.
        A memoised template was walked to the end, so no cycle runs through it."""
        total, height, below = 0, 0, []
        for name in _include_names(meta):
            cand, sub = self.find(name)
            if sub in chain:
                raise IncludeError(f"[meta] include '{excerpt(name)}' includes itself")
            if len(chain) > MAX_INCLUDE_DEPTH:
                raise IncludeError(self._too_deep(name))
            if sub not in self._memo:
                doc = self.document(cand, sub, name)
                reads, levels, under = self._walk(doc.get("meta", {}), (*chain, sub))
                self._memo[sub] = (1 + reads, 1 + levels, [cand, *under])
            reads, levels, under = self._memo[sub]
            if len(chain) - 1 + levels > MAX_INCLUDE_DEPTH:
                raise IncludeError(self._too_deep(name))
            total += reads
            if total > MAX_INCLUDES:
                raise IncludeError(
                    f"[meta] include: the templates include each other into more than {MAX_INCLUDES} template "
                    "reads (wellmap reads a template once for every path that includes it): not a plate layout"
                )
            height = max(height, levels)
            below += under
        return total, height, below

    @staticmethod
    def _too_deep(name: str) -> str:
        return (
            f"[meta] include '{excerpt(name)}': templates include templates more than {MAX_INCLUDE_DEPTH} levels deep"
        )


def resolve_includes(
    layout: Path,
    search_dirs: list[Path],
    meta: dict | None = None,
    max_bytes: int = MAX_LAYOUT_BYTES,
) -> list[Path]:
    """Resolve a layout's includes (recursively) to template paths, each once.

    Each include must be a bare file name; it is looked for in ``search_dirs`` in order, and must stay
    inside that folder after resolving links. ``meta`` is the layout's ``[meta]`` table when the caller
    has already parsed it. Raises :class:`IncludeError` for a disallowed name, a missing template, a link
    leaving its folder, a cycle or too many includes, and :class:`LayoutFileError` for a template that
    is not a usable TOML file.
    """
    if meta is None:
        meta = check_meta(read_toml(layout, max_bytes).get("meta", {}))
    return Resolver(search_dirs, max_bytes).resolve(Path(layout), meta)
