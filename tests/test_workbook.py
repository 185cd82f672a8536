"""results.xlsx (issue 17): the summary tables as sheets, read back with openpyxl."""

from __future__ import annotations

import datetime as dt
import math
import subprocess
import sys
import zipfile

import openpyxl
import pandas as pd
import pytest
from openpyxl.utils import get_column_letter
from pagekit import run_tables

from cr51.report.workbook import P_FORMAT, SHEETS, TEXT_FORMAT, write_workbook
from cr51.schema import TABLES

HOSTILE = {
    "=": '=HYPERLINK("http://evil.example/","click")',
    "+": "+1+cmd|' /C calc'!A0",
    "-": "-2+3",
    "@": "@SUM(1+1)",
}


@pytest.fixture(scope="module")
def tables():
    t = dict(run_tables())
    # hostile text in a lot (potency) and a reason (qc): stored as text, never as a formula
    pot = t["potency"].copy()
    for i, text in enumerate(HOSTILE.values()):
        pot.loc[i, "lot"] = text
    t["potency"] = pot
    qc = t["qc"].copy()
    qc.loc[0, "reason"] = HOSTILE["="]
    t["qc"] = qc
    return t


@pytest.fixture(scope="module")
def book(tables, tmp_path_factory):
    path = tmp_path_factory.mktemp("xlsx") / "results.xlsx"
    write_workbook(tables, path, version="9.8.7", run_time="2026-12-02 09:00 UTC")
    return path, openpyxl.load_workbook(path)


def test_sheets_headers_frozen_and_filtered(tables, book):
    _, wb = book
    assert wb.sheetnames == ["README", *SHEETS]
    for name in SHEETS:
        ws = wb[name]
        header = [c.value for c in ws[1]]
        assert header == list(TABLES[name].names), name  # the schema's columns, in order
        assert all(c.font.b for c in ws[1])
        assert ws.freeze_panes == "A2", name
        assert ws.auto_filter.ref == f"A1:{get_column_letter(len(header))}{len(tables[name]) + 1}", name
        widths = [ws.column_dimensions[get_column_letter(i)].width for i in range(1, len(header) + 1)]
        assert all(8 <= w <= 62 for w in widths), (name, widths)
        assert ws.max_row == len(tables[name]) + 1


def same(cell: object, value: object, kind: str) -> bool:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)) or value == "":
        return cell is None  # missing, or empty text (in the CSVs too an empty text cell is missing)
    if kind == "float":
        return math.isclose(cell, float(value), rel_tol=1e-15, abs_tol=0)
    if kind in ("bool", "boolean"):
        return cell is bool(value)
    if kind == "int":
        return cell == int(value)
    if isinstance(cell, dt.datetime):
        return cell.date().isoformat() == value
    return cell == value


def test_values_equal_the_tables(tables, book):
    _, wb = book
    for name in SHEETS:
        kinds = TABLES[name].kinds
        df = tables[name][list(TABLES[name].names)]
        got = list(wb[name].iter_rows(min_row=2, values_only=True))
        assert len(got) == len(df)
        for row, want in zip(got, df.itertuples(index=False)):
            for cell, value, col in zip(row, want, df.columns):
                assert same(cell, value, kinds[col]), (name, col, cell, value)


def test_hostile_text_is_a_string_never_a_formula(book):
    path, wb = book
    ws = wb["potency"]
    cells = {ws.cell(row=i + 2, column=2).value: ws.cell(row=i + 2, column=2) for i in range(len(HOSTILE))}
    assert set(cells) == set(HOSTILE.values())
    for text, cell in cells.items():
        assert cell.data_type == "s", text
        assert cell.quotePrefix, text  # editing the cell in Excel keeps it text
    reason = wb["qc"].cell(row=2, column=list(TABLES["qc"].names).index("reason") + 1)
    assert reason.value == HOSTILE["="] and reason.data_type == "s"
    with zipfile.ZipFile(path) as z:
        for member in z.namelist():
            if member.startswith("xl/worksheets/"):
                assert b"<f>" not in z.read(member) and b"<f " not in z.read(member), member


def test_number_formats_follow_the_column_kinds(tables, book):
    _, wb = book

    def fmt_of(sheet: str, col: str) -> str:
        ws = wb[sheet]
        j = list(TABLES[sheet].names).index(col) + 1
        formats = {ws.cell(row=i, column=j).number_format for i in range(2, ws.max_row + 1)
                   if ws.cell(row=i, column=j).value is not None}  # fmt: skip
        assert len(formats) == 1, (sheet, col, formats)
        return formats.pop()

    # RP near 1 and its limits: 4 significant digits, one format for the estimate and its CI
    rp = fmt_of("potency", "rp")
    assert rp == fmt_of("potency", "rp_lo") == fmt_of("potency", "rp_hi")
    values = pd.concat([tables["potency"][c] for c in ("rp", "rp_lo", "rp_hi")]).abs()
    median = float(values[values > 0].median())
    assert rp == "0." + "0" * (3 - math.floor(math.log10(median)))  # 4 significant digits at the median
    assert fmt_of("qc", "maximum_cpm") == "0"  # thousands of counts
    assert fmt_of("qc", "lu_k") == "0.00000"  # a few hundredths
    for sheet, col in (("potency", "parallel_f_p"), ("potency", "p_holm"), ("potency_combined", "homogeneity_p"),
                       ("campaign_pairs", "p_adj"), ("lots_differ", "p")):  # fmt: skip
        assert fmt_of(sheet, col) == P_FORMAT
    assert fmt_of("potency", "df") == "0" and fmt_of("campaign_lots", "n_plates") == "0"
    assert fmt_of("potency", "lot") == TEXT_FORMAT and fmt_of("qc", "plate") == TEXT_FORMAT
    assert fmt_of("qc", "date") == "yyyy-mm-dd"
    ws = wb["qc"]
    j = list(TABLES["qc"].names).index("date") + 1
    assert isinstance(ws.cell(row=2, column=j).value, dt.datetime)


def test_readme_says_what_each_sheet_is_with_version_and_run_time(tables, book):
    _, wb = book
    rows = list(wb["README"].iter_rows(values_only=True))
    assert ("software", "cr51 9.8.7", None) in rows and ("run time", "2026-12-02 09:00 UTC", None) in rows
    listed = {r[0]: r for r in rows if r[0] in SHEETS}
    assert set(listed) == set(SHEETS)
    for name, r in listed.items():
        assert r[1] == len(tables[name]) and r[2] == SHEETS[name]


def test_a_missing_table_is_left_out_and_said_so(tmp_path, tables):
    t = {k: v for k, v in tables.items() if not k.startswith("campaign_")}
    write_workbook(t, tmp_path / "r.xlsx", version="1", run_time="now")
    wb = openpyxl.load_workbook(tmp_path / "r.xlsx")
    assert [s for s in wb.sheetnames if s.startswith("campaign_")] == []
    notes = {r[0]: r[2] for r in wb["README"].iter_rows(values_only=True) if r[0] in SHEETS}
    assert notes["campaign_lots"].endswith("Not in this run.")


def test_written_atomically_with_the_ordinary_file_mode(tmp_path, tables):
    path = tmp_path / "out" / "results.xlsx"
    write_workbook(tables, path, version="1", run_time="now")
    first = path.stat().st_ino
    write_workbook(tables, path, version="1", run_time="later")
    assert [p.name for p in path.parent.iterdir()] == ["results.xlsx"]  # no temporary file left
    assert path.stat().st_ino != first  # replaced by a rename, not rewritten in place
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_the_batch_jobs_do_not_import_openpyxl_for_the_workbook():
    """cr51.report exports write_workbook lazily: a batch job (plate sections) does not pay for openpyxl."""
    code = (
        "import sys, cr51.report; from cr51.report import plate_sections; "
        "assert 'openpyxl' not in sys.modules and 'cr51.campaign' not in sys.modules, 'eager'; "
        "from cr51.report import write_workbook, build_lot_pages, build_campaign_pages, write_pages; "
        "assert 'openpyxl' in sys.modules"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
