"""Issue 14, part A: hostile input files are bounded and confined.

Each attack of the issue is built here, small, under ``tmp_path``: every one gets a status and a reason
(``rejected`` in files.csv, a :class:`LayoutError` or :class:`InputError`), quickly and in little memory,
and never stops the scan or the batch. Time limits are enforced with SIGALRM (:func:`within`), memory is
measured with :mod:`tracemalloc` (:func:`peak_mb`).
"""

from __future__ import annotations

import io
import os
import signal
import tomllib
import tracemalloc
import unicodedata
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import openpyxl
import pytest
import wellmap  # imported before memory is measured (its import is not the layout's cost)
from conftest import BATCH_SETTINGS, LAYOUTS

from cr51 import includes, ingest
from cr51.batch import PlateCache, process_batch
from cr51.ingest import InputError, read_export
from cr51.layout import LayoutError, load_layout
from cr51.plate import PlateInput, ingest_batch
from cr51.report.html import esc
from cr51.scan import scan
from cr51.settings import load_schema
from cr51.simulate import simulate_plate, write_plate

GOOD = '[meta]\npath = "{export}"\n{include}[well.A1]\nrole = "spontaneous"\n'


class Hung(BaseException):
    """Raised by :func:`within`: not an ``Exception`` (nor an ``OSError``, as ``TimeoutError`` is), so no
    ``except`` of the code under test can take it for the file's problem and carry on."""


@contextmanager
def within(seconds: int):
    """Fail with :class:`Hung` if the block takes longer than ``seconds`` (a hang on an unbounded input)."""

    def boom(*_):
        raise Hung(f"took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def peak_mb(fn) -> tuple[object, float]:
    """(``fn()`` or the exception it raised, the peak of Python memory allocated meanwhile in MB)."""
    tracemalloc.start()
    try:
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - the caller looks at it
            result = err
        return result, tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def layout(raw: Path, name: str, body: str = "", *, include: str = "", export: str | None = None) -> Path:
    """``<name>.toml`` naming ``<name>.csv`` (written too), with ``body`` appended."""
    export = export or f"{name}.csv"
    inc = f"include = {include}\n" if include else ""
    path = raw / f"{name}.toml"
    path.write_text(GOOD.format(export=export, include=inc) + body, encoding="utf-8")
    if not (raw / export).exists():
        (raw / export).write_text("Well,CPM\nA1,100\n", encoding="utf-8")
    return path


def scanned(raw: Path, layouts_dir: Path = LAYOUTS, **kw):
    s = scan(raw, layouts_dir=layouts_dir, batch_count=4, settle_seconds=0, **kw)
    return s, {o.file: o for o in s.others}


def refused(path: Path, *fragments: str, layouts_dir: Path = LAYOUTS, **kw) -> str:
    with pytest.raises(LayoutError) as err:
        load_layout(path, layouts_dir=layouts_dir, **kw)
    reason = str(err.value)
    for f in fragments:
        assert f in reason
    return reason


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    d = tmp_path / "raw"
    d.mkdir()
    return d


# --------------------------------------------------------------------------------------------
# 1. bounded layout parsing


def test_arrays_nested_1000_deep_are_a_reason_not_a_crash(raw):
    path = layout(raw, "deep", "[expt]\nx = " + "[" * 1000 + "]" * 1000 + "\n")  # 2 KB
    assert path.stat().st_size < 3300
    s, rows = scanned(raw)
    assert "deep" not in s.plates
    assert rows["deep.toml"].status == "rejected" and "more than 16 deep" in rows["deep.toml"].reason
    refused(path, "more than 16 deep")


def test_dotted_keys_are_refused_before_tomllib_fills_memory(raw):
    # tomllib's memory grows with the square of a key's parts: 6 KB of them took 63 MB, 51 KB 2.7 GB
    path = layout(raw, "dots", "[expt]\n" + "a." * 3000 + "b = 1\n")
    (s, rows), mb = peak_mb(lambda: scanned(raw))
    assert rows["dots.toml"].status == "rejected" and "dotted key of more than 8 parts" in rows["dots.toml"].reason
    assert mb < 5
    err, mb = peak_mb(lambda: load_layout(path, layouts_dir=LAYOUTS))
    assert isinstance(err, LayoutError) and "dotted key" in str(err) and mb < 5


def test_many_keys_are_refused(raw):
    path = layout(raw, "keys", "[expt]\n" + "".join(f"k{i} = {i}\n" for i in range(10_001)))
    refused(path, "more than 10,000 keys and values")


def test_strings_and_comments_do_not_count_as_nesting_or_dotted_keys(raw):
    text = (
        '[expt]\nreference_lot = "R"\nnote = "[[[[[[[[[[[[[[[[[[[[ a.b.c.d.e.f.g.h.i.j"  # {{{{{{{{{{{{{{{{{{\n'
        "other = '''\n]]]]]]]]]]]]]]]]]] a.b.c.d.e.f.g.h.i.j.k \"\"\"'''\n"
        'more = """x \\""" [[[[[[[[[[[[[[[[[[ """\n'
    )
    doc = includes.parse_toml(text.encode(), "the layout")
    assert doc["expt"]["other"].startswith("]]]") and doc["expt"]["more"].startswith('x """ [[[')


@pytest.mark.parametrize(
    "table, words",
    [
        ("[block.300x300.A1]\nrole = 'sample'\n", "is larger than the plate"),
        ("[well.A1-Z99]\nrole = 'sample'\n", "covers wells outside the plate"),
        ("[row.A-ZZZ]\nrole = 'sample'\n", "covers wells outside the plate"),
        ("[col.'1,2,...,99999999']\nrole = 'sample'\n", "covers wells outside the plate"),
    ],
)
def test_well_tables_outside_the_plate_are_refused_before_wellmap_expands_them(raw, table, words):
    path = layout(raw, "big", table)
    with within(20):
        err, mb = peak_mb(lambda: load_layout(path, layouts_dir=LAYOUTS))
    assert isinstance(err, LayoutError) and words in str(err)
    assert mb < 5  # [block.100000x100000.A1] would have been 10^10 wells


@pytest.mark.parametrize("levels, words", [(8, "more than 4 levels deep"), (3, "more than 32 template reads")])
def test_include_fan_out_reads_each_template_once_and_is_refused(raw, monkeypatch, levels, words):
    # the 2.3 KB: 8 levels of 10 templates, each including the 10 of the next level (10^8 paths for
    # wellmap); 3 levels stay within the depth limit and fan out to 1,110 template reads
    for level in range(levels):
        for k in range(10):
            nxt = "[" + ", ".join(f'"t{level + 1}_{j}.toml"' for j in range(10)) + "]" if level < levels - 1 else "[]"
            (raw / f"t{level}_{k}.toml").write_text(f"[meta]\ninclude = {nxt}\n")
    path = layout(raw, "fan", include="[" + ", ".join(f'"t0_{j}.toml"' for j in range(10)) + "]")
    parsed = []
    real = tomllib.loads
    monkeypatch.setattr(tomllib, "loads", lambda text: parsed.append(text) or real(text))
    with within(20):
        s, rows = scanned(raw)
    assert rows["fan.toml"].status == "rejected" and words in rows["fan.toml"].reason
    files = 10 * levels + 1
    assert len(parsed) <= 2 * files  # every file at most twice: as a layout of the folder and as a template
    parsed.clear()
    with within(20):
        refused(path, words)
    assert len(parsed) <= files


def test_templates_nested_too_deep_are_refused(raw):
    for level in range(6):
        (raw / f"n{level}.toml").write_text(f'[meta]\ninclude = "n{level + 1}.toml"\n' if level < 5 else "")
    refused(layout(raw, "nest", include='"n0.toml"'), "more than 4 levels deep")
    (raw / "n3.toml").write_text("")  # n0 -> n1 -> n2 -> n3: 4 levels, allowed
    assert load_layout(raw / "nest.toml", layouts_dir=LAYOUTS).includes == tuple(
        str(raw / f"n{i}.toml") for i in range(4)
    )


def test_diamond_includes_are_listed_once(raw):
    (raw / "base.toml").write_text("[well.A2]\nrole = 'maximum'\n")
    (raw / "left.toml").write_text('[meta]\ninclude = "base.toml"\n')
    (raw / "right.toml").write_text('[meta]\ninclude = "base.toml"\n')
    lay = load_layout(layout(raw, "dia", include='["left.toml", "right.toml"]'), layouts_dir=LAYOUTS)
    assert sorted(Path(p).name for p in lay.includes) == ["base.toml", "left.toml", "right.toml"]
    assert set(lay.wells["role"]) == {"spontaneous", "maximum"}


def test_a_layout_over_max_layout_bytes_is_refused_unparsed(raw, monkeypatch):
    path = layout(raw, "huge", "[well.A1]\nexclude_reason = '" + "x" * 5_000_000 + "'\n")
    monkeypatch.setattr(tomllib, "loads", lambda text: pytest.fail("parsed"))
    s, rows = scanned(raw)
    assert "more than the limit of 1,000,000" in rows["huge.toml"].reason
    refused(path, "more than the limit of 1,000,000 (config max_layout_bytes)")
    refused(path, "more than the limit of 100", max_bytes=100)


def test_long_free_text_is_refused_with_a_short_reason(raw):
    path = layout(raw, "long", "exclude = true\nexclude_reason = '" + "bubble " * 2000 + "'\n")
    reason = refused(path, "well A1: exclude_reason is 14,000 characters", "more than 200")
    assert len(reason) < 300
    path = layout(raw, "date", "[expt]\ndate = '" + "2026" * 100 + "'\n")
    refused(path, "[expt] date is 400 characters")


def test_any_parser_failure_is_the_files_reason(raw, monkeypatch):
    path = layout(raw, "boom")

    def memory(_text):
        raise MemoryError

    with monkeypatch.context() as m:
        m.setattr(tomllib, "loads", memory)
        s, rows = scanned(raw)
        assert rows["boom.toml"].status == "rejected"
        assert rows["boom.toml"].reason == "the layout could not be parsed (MemoryError): not a plate layout"
        refused(path, "(MemoryError)")

    def recursion(*_a, **_k):
        raise RecursionError

    monkeypatch.setattr(wellmap, "load", recursion)
    refused(path, "wellmap could not read the layout (RecursionError)")


# --------------------------------------------------------------------------------------------
# 2. the drop folder is a boundary


@pytest.mark.parametrize("key", ["concat", "paths", "alert", "style"])
def test_meta_keys_other_than_path_and_include_are_refused(raw, key):
    path = raw / "k.toml"
    path.write_text(f'[meta]\npath = "k.csv"\n{key} = "x"\n[well.A1]\nrole = "spontaneous"\n')
    (raw / "k.csv").write_text("Well,CPM\nA1,1\n")
    s, rows = scanned(raw)
    assert rows["k.toml"].status == "rejected" and f"[meta] {key} is not allowed" in rows["k.toml"].reason
    refused(path, f"[meta] {key} is not allowed")


def test_concat_of_a_fifo_dev_zero_or_an_outside_layout_is_refused_unopened(tmp_path, raw):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    outside = tmp_path / "outside.toml"
    outside.write_text("[well.A1]\nrole = 'sample'\n")
    reasons = {}
    for i, target in enumerate([fifo, Path("/dev/zero"), outside, tmp_path / "absent.toml"]):
        path = raw / f"c{i}.toml"
        path.write_text(f'[meta]\npath = "c{i}.csv"\nconcat = "{target}"\n[well.A1]\nrole = "spontaneous"\n')
        (raw / f"c{i}.csv").write_text("Well,CPM\nA1,1\n")
        with within(10):  # a FIFO opened for reading would block here
            reasons[target] = refused(path, "[meta] concat is not allowed")
            rows = scanned(raw)[1]
        assert rows[f"c{i}.toml"].status == "rejected"
    assert reasons[outside] == reasons[tmp_path / "absent.toml"]  # nothing says whether it exists


def test_a_template_linking_outside_is_never_read(tmp_path, raw):
    secret = tmp_path / "secret.toml"
    secret.write_text('[well.A1]\nexclude = true\nexclude_reason = "TOPSECRET"\n')
    (raw / "t.toml").symlink_to(secret)
    (raw / "gone.toml").symlink_to(tmp_path / "no-such-file.toml")
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "lab.toml").symlink_to(secret)
    for name, inc in [("p1", '"t.toml"'), ("p2", '"gone.toml"'), ("p3", '"lab.toml"')]:
        layout(raw, name, include=inc)
    s, rows = scanned(raw, layouts_dir=lab)
    assert not s.plates
    reasons = [rows[f"{n}.toml"].reason for n in ("p1", "p2", "p3")]
    assert all("is a link to a file outside the drop folder and the templates folder: not read" in r for r in reasons)
    assert reasons[0].replace("t.toml", "gone.toml") == reasons[1]  # an existing and a dangling target: alike
    assert not any("TOPSECRET" in str(o) for o in s.others)
    for n in ("p1", "p2", "p3"):
        assert "TOPSECRET" not in refused(raw / f"{n}.toml", "outside the drop folder", layouts_dir=lab)
    (lab / "inside.toml").write_text("[well.A2]\nrole = 'maximum'\n")
    (lab / "alias.toml").symlink_to(lab / "inside.toml")  # a link that stays inside its folder is fine
    layout(raw, "p4", include='"alias.toml"')
    assert set(load_layout(raw / "p4.toml", layouts_dir=lab).wells["role"]) == {"spontaneous", "maximum"}


def test_a_fifo_template_in_the_drop_folder_is_never_opened(raw):
    os.mkfifo(raw / "pipe.toml")
    path = layout(raw, "p", include='"pipe.toml"')
    with within(10):
        refused(path, "is not a regular file")
        rows = scanned(raw)[1]
    assert rows["p.toml"].status == "rejected" and "not a regular file" in rows["p.toml"].reason
    assert rows["pipe.toml"].status == "ignored"


def test_meta_path_naming_a_link_is_refused_with_the_reason(tmp_path, raw):
    (tmp_path / "elsewhere.csv").write_text("Well,CPM\nA1,1\n")
    (raw / "l.csv").symlink_to(tmp_path / "elsewhere.csv")
    layout(raw, "l")
    rows = scanned(raw)[1]
    assert (
        rows["l.toml"].status == "rejected"
        and "names a file that is not read: a symbolic link" in rows["l.toml"].reason
    )


# --------------------------------------------------------------------------------------------
# 3. xlsx exports


def workbook(rows: list[list[object]]) -> bytes:
    wb = openpyxl.Workbook()
    ws = wb.active
    for r in rows:
        ws.append(r)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


WELLS = [["Well", "CPM"]] + [[f"{r}{c}", 1000 + c] for r in "ABCDEFGH" for c in range(1, 13)]


def with_member(data: bytes, member: str, edit) -> bytes:
    """``data`` (a zip) with ``member``'s bytes replaced by ``edit(bytes)`` (chunks: an iterable of bytes)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename == member:
                with dst.open(member, "w", force_zip64=True) as fh:
                    for chunk in edit(src.read(member)):
                        fh.write(chunk)
            else:
                dst.writestr(info, src.read(info.filename))
    return out.getvalue()


def padded_sheet(mb: int):
    """The sheet with ``mb`` MB of empty rows before ``</sheetData>``: compresses over 1000:1."""

    def edit(xml: bytes):
        head, tail = xml.split(b"</sheetData>")
        yield head
        row = b'<row r="200"><c r="A200"><v>1</v></c></row>' * 25_000
        for _ in range(mb):
            yield row
        yield b"</sheetData>" + tail

    return edit


def test_an_xlsx_zip_bomb_is_refused_before_it_is_unpacked(tmp_path):
    bomb = with_member(workbook(WELLS), "xl/worksheets/sheet1.xml", padded_sheet(60))
    assert len(bomb) < 1_000_000
    path = tmp_path / "bomb.xlsx"
    path.write_bytes(bomb)
    with within(10):
        err, mb = peak_mb(lambda: read_export(path))
    assert isinstance(err, InputError) and "unpacks to" in str(err) and "max_xlsx_unzipped_bytes" in str(err)
    assert mb < 10
    with within(10):
        err = peak_mb(lambda: read_export(path, max_unzipped_bytes=10**9))[0]
    assert isinstance(err, InputError) and "times its size (more than 200)" in str(err)


def test_an_xlsx_cell_is_never_echoed_whole(tmp_path):
    # Excel cells hold 32,767 characters, a file can hold more: 2 MB of letters (they do not compress much)
    path = tmp_path / "cell.xlsx"
    letters = np.random.default_rng(0).integers(97, 123, 2_000_000, dtype=np.uint8).tobytes()
    small = workbook([["Well", "CPM"], ["A1" + "x" * 100, 5]])
    path.write_bytes(with_member(small, "xl/worksheets/sheet1.xml", lambda xml: [xml.replace(b"x" * 100, letters)]))
    with pytest.raises(InputError) as err:
        read_export(path)
    assert len(str(err.value)) < 300 and "a cell of 2,000,002 characters, more than 10,000" in str(err.value)
    path.write_bytes(workbook([["Well", "CPM"], ["A1" + "x" * 5000, 5]]))  # under the cell limit: an excerpt
    with pytest.raises(InputError) as err:
        read_export(path)
    assert len(str(err.value)) < 300 and "(5,002 characters)" in str(err.value)
    csv = tmp_path / "cell.csv"
    csv.write_text("Well,CPM\nA1," + "9" * 50_000 + "x\n")
    with pytest.raises(InputError) as err:
        read_export(csv)
    assert len(str(err.value)) < 300


def test_an_xlsx_with_too_many_rows_is_refused(tmp_path):
    path = tmp_path / "rows.xlsx"
    path.write_bytes(workbook(WELLS + [["note", i] for i in range(10_000)]))
    with pytest.raises(InputError, match="more than 10,000 rows"):
        read_export(path)


def test_an_encrypted_workbook_says_so(tmp_path):
    path = tmp_path / "locked.xlsx"
    path.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(4096))  # an OLE compound file
    with pytest.raises(InputError, match=r"encrypted or legacy \.xls workbook .*without a password"):
        read_export(path)


def test_a_formula_without_a_cached_value_says_so(tmp_path):
    path = tmp_path / "formula.xlsx"
    path.write_bytes(workbook(WELLS[:5] + [["E1", "=B2*2"]]))  # openpyxl stores no cached value
    with pytest.raises(InputError, match=r"cell B6: formula without a cached value .*open and save it in Excel"):
        read_export(path)
    path.write_bytes(workbook(WELLS))
    assert read_export(path).format == "xlsx/well_list"


# --------------------------------------------------------------------------------------------
# 4. names


def test_an_nfc_meta_path_finds_its_nfd_export(raw):
    nfc, nfd = unicodedata.normalize("NFC", "élève.csv"), unicodedata.normalize("NFD", "élève.csv")
    layout(raw, "accent", export=nfc)
    (raw / nfc).unlink()
    (raw / nfd).write_text("Well,CPM\nA1,1\n")
    with within(10):
        s, rows = scanned(raw)
    assert s.plates["accent"].export == str(raw / nfd)
    assert not rows


def test_names_differing_only_by_normalisation_are_not_both_used(raw):
    nfc, nfd = (unicodedata.normalize(f, "élève") for f in ("NFC", "NFD"))
    layout(raw, nfc)
    layout(raw, nfd)
    s, rows = scanned(raw)
    assert list(s.plates) == [nfc]
    for suffix in (".toml", ".csv"):
        row = rows[nfd + suffix]
        assert row.status == "rejected" and "only by Unicode normalisation" in row.reason and nfc + suffix in row.reason


def test_bidirectional_controls_are_refused_in_names_and_escaped_in_html_and_csv(raw):
    name = "run\u202e1vsc"
    layout(raw, name)
    s, rows = scanned(raw)
    assert not s.plates
    row = rows["run\\u202e1vsc.toml"]
    assert row.status == "rejected" and "bidirectional control character (U+202E)" in row.reason
    assert not any("\u202e" in o.file + o.reason for o in s.others)
    for ch in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f":
        assert ch not in esc(f"plate {ch} x")
    assert esc("run\u202e1") == "run\\u202e1"
    path = layout(raw, "ok", "exclude = true\nexclude_reason = 'bubble \u2067x'\n")
    refused(path, "exclude_reason holds an invisible bidirectional control character (U+2067)")


# --------------------------------------------------------------------------------------------
# 5. one plate cannot take the batch down


def plates(raw: Path) -> list[PlateInput]:
    out = []
    for i, name in enumerate(("good", "bad")):
        p = simulate_plate(name, np.random.default_rng(i))
        write_plate(raw, p)
        out.append(PlateInput(name, str(raw / f"{name}.toml"), str(raw / p.export_name)))
    return out


def test_any_exception_in_a_plate_is_its_reason_and_is_not_cached(raw, tmp_path, monkeypatch):
    import cr51.batch

    real = cr51.batch.plate_sections

    def sections(tables, settings):
        if (tables["qc"]["plate"] == "bad").any():
            raise MemoryError
        return real(tables, settings)

    monkeypatch.setattr(cr51.batch, "plate_sections", sections)
    cache = PlateCache(tmp_path / "cache", BATCH_SETTINGS)
    out = process_batch(plates(raw), BATCH_SETTINGS, cache)
    files = out.tables["files"].set_index("file")
    assert set(files.loc[["bad.toml", "bad.csv"], "status"]) == {"rejected"}
    assert (
        files.loc["bad.toml", "reason"] == "internal error while processing this plate (MemoryError); see the batch log"
    )
    assert set(files.loc[["good.toml", "good.csv"], "status"]) == {"ok"}
    assert set(out.tables["qc"]["plate"]) == {"good"} and list(out.files) == ["good"]  # only the good plate has a page
    assert len(list((tmp_path / "cache").glob("*.jsonl"))) == 1  # the failure is retried next run


def test_an_export_removed_mid_run_is_a_reason(raw):
    good, bad = plates(raw)
    Path(bad.export).unlink()
    Path(good.layout).unlink()
    files = ingest_batch([good, bad], BATCH_SETTINGS)["files"].set_index("file")
    assert set(files["status"]) == {"rejected"}
    assert "file not found" in files.loc["bad.csv", "reason"]
    assert "is not there" in files.loc["good.toml", "reason"] and files.loc["good.toml", "sha256"] == ""


# --------------------------------------------------------------------------------------------
# the limits' defaults are the schema's


def test_the_modules_defaults_are_the_schemas():
    props = load_schema()["properties"]
    assert includes.MAX_LAYOUT_BYTES == props["max_layout_bytes"]["default"]
    assert ingest.MAX_UNZIPPED_BYTES == props["max_xlsx_unzipped_bytes"]["default"]
    assert BATCH_SETTINGS.max_layout_bytes == includes.MAX_LAYOUT_BYTES
