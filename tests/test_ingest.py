"""Tests for cr51.ingest: counter-export parsers (fixtures: tests/data/exports/, see tests/data/README.md)."""

from __future__ import annotations

import builtins
from pathlib import Path

import openpyxl
import pandas as pd
import pytest

from cr51.ingest import Export, InputError, read_export

EXPORTS = Path(__file__).parent / "data" / "exports"
W4391 = EXPORTS / "wizard2" / "004391.csv"
W4821 = EXPORTS / "wizard2" / "004821.csv"
ROWS = "ABCDEFGH"


def cpm_of(exp: Export) -> dict:
    """{well: cpm} for well exports, {(rack, pos): cpm} for tube exports."""
    df = exp.counts
    if df["well"].isna().all():
        return {(int(r), int(p)): c for r, p, c in zip(df["rack"], df["pos"], df["cpm"])}
    return dict(zip(df["well"], df["cpm"]))


def write(tmp_path: Path, text: str, name: str = "export.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def grid_text(corner: str = "CPM", sep: str = ",", value=lambda r, c: f"{100 * r + c}", rows: str = ROWS) -> str:
    lines = [sep.join([corner] + [str(c) for c in range(1, 13)])]
    for r, letter in enumerate(rows):
        lines.append(sep.join([letter] + [value(r, c) for c in range(1, 13)]))
    return "\n".join(lines) + "\n"


def raises(path: Path, *fragments: str, **kwargs) -> str:
    """read_export(path) must raise InputError whose message contains every fragment (case-insensitive)."""
    with pytest.raises(InputError) as info:
        read_export(path, **kwargs)
    msg = str(info.value)
    for fragment in fragments:
        assert fragment.lower() in msg.lower(), f"{fragment!r} not in {msg!r}"
    return msg


# ------------------------------------------------------------------------------------------ Wizard2


def test_wizard2_004391():
    exp = read_export(W4391)
    assert exp.format == "wizard2"
    df = exp.counts
    assert list(df.columns) == ["well", "rack", "pos", "cpm"]
    assert str(df["rack"].dtype) == "Int64" and str(df["pos"].dtype) == "Int64" and df["cpm"].dtype == "float64"
    assert len(df) == 19 and all(w is None for w in df["well"])
    cpm = cpm_of(exp)
    assert cpm[(1, 2)] == 10064.95
    assert cpm[(1, 1)] == 0.0  # background tube, CPM 0 is valid
    assert cpm[(1, 3)] == 2.57
    assert cpm[(2, 8)] == 10090.49
    assert cpm[(2, 9)] == 0.0
    assert sorted({r for r, _ in cpm}) == [1, 2]
    assert list(df["pos"][:3]) == [1, 2, 3]  # file order
    assert any("Cr-51 CPM" in n for n in exp.notes)


def test_wizard2_004821():
    exp = read_export(W4821)
    assert exp.format == "wizard2"
    cpm = cpm_of(exp)
    assert len(exp.counts) == 12
    assert sorted({r for r, _ in cpm}) == [1, 2, 3]
    assert cpm[(1, 1)] == 2.69
    assert cpm[(1, 5)] == 2569.67
    assert cpm[(3, 2)] == 1453.99


def test_wizard2_detected_from_content_not_name(tmp_path):
    path = tmp_path / "plate.xlsx"  # misleading extension
    path.write_bytes(W4821.read_bytes())
    assert read_export(path).format == "wizard2"


def wizard2_variant(tmp_path: Path, line_no: int, edit) -> Path:
    """004391.csv with line `line_no` (1-based) replaced by edit(line)."""
    lines = W4391.read_text().split("\n")
    lines[line_no - 1] = edit(lines[line_no - 1])
    return write(tmp_path, "\n".join(lines), "004391.csv")


def set_cell(index: int, value: str):
    def edit(line: str) -> str:
        cells = line.split(",")
        cells[index] = value
        return ",".join(cells)

    return edit


def test_wizard2_truncated_last_line(tmp_path):
    text = W4391.read_text().rstrip("\n")
    path = write(tmp_path, text[: text.rindex(",1068.66")] + ",10", "004391.csv")  # cut mid-line
    raises(path, "line 20", "truncated")


def test_wizard2_truncated_middle_line(tmp_path):
    path = wizard2_variant(tmp_path, 5, lambda ln: ln[: ln.index(",15129.8")])
    raises(path, "line 5", "truncated")


def test_wizard2_non_numeric_cpm(tmp_path):
    path = wizard2_variant(tmp_path, 3, set_cell(11, "n/a"))
    raises(path, "line 3", "rack 1 pos 2", "'n/a'", "not a number")


def test_wizard2_negative_cpm(tmp_path):
    path = wizard2_variant(tmp_path, 14, set_cell(11, "-523.84"))
    raises(path, "line 14", "rack 2 pos 3", "-523.84", "negative")


def test_wizard2_bad_rack(tmp_path):
    path = wizard2_variant(tmp_path, 4, set_cell(5, "x"))
    raises(path, "line 4", "Rack 'x'", "whole number")


def test_wizard2_duplicate_tube(tmp_path):
    path = wizard2_variant(tmp_path, 4, set_cell(7, "2"))  # rack 1 pos 3 -> pos 2, already on line 3
    raises(path, "line 4", "rack 1 pos 2", "twice", "line 3")


def test_wizard2_nan_cpm(tmp_path):
    path = wizard2_variant(tmp_path, 6, set_cell(11, "NaN"))
    raises(path, "line 6", "rack 1 pos 5", "not a finite number")


def test_wizard2_several_nuclides(tmp_path):
    text = "Rack,Pos,I-125 Counts,I-125 CPM,Cr-51 Counts,Cr-51 CPM\n1,1,10,5.5,20,7.25\n1,2,10,6,20,8\n"
    exp = read_export(write(tmp_path, text))
    assert cpm_of(exp) == {(1, 1): 7.25, (1, 2): 8.0}
    assert "Cr-51 CPM" in exp.notes[0]
    other = write(tmp_path, text.replace("Cr-51", "Tc-99m"), "other.csv")
    raises(other, "several nuclide CPM columns", "I-125 CPM", "Tc-99m CPM", "Cr-51")


# ---------------------------------------------------------------------------------------- well list


def test_well_list_preamble_padding_thousands():
    exp = read_export(EXPORTS / "well_list_preamble.csv")
    assert exp.format == "well_list"
    assert list(exp.counts["well"]) == ["A1", "A2", "B1", "H12"]  # A01 -> A1, file order
    assert cpm_of(exp) == {"A1": 1187.5, "A2": 1240.25, "B1": 12345.5, "H12": 4975.0}
    assert exp.counts["rack"].isna().all() and exp.counts["pos"].isna().all()
    assert str(exp.counts["rack"].dtype) == "Int64" and exp.counts["cpm"].dtype == "float64"
    assert any("CCPM1" in n and "Counts" in n for n in exp.notes)  # used CCPM1, ignored raw Counts


def test_well_list_semicolon_decimal_comma_bom():
    exp = read_export(EXPORTS / "well_list_semicolon.csv")
    assert exp.format == "well_list"
    assert cpm_of(exp) == {"A1": 1234.5, "A2": 1234.5, "B1": 0.0, "C12": 98765.0, "D1": 12345.75}


def test_well_list_tab_raw_counts():
    exp = read_export(EXPORTS / "well_list_tab.tsv")
    assert cpm_of(exp) == {"A1": 100.0, "B2": 250.5, "H12": 7.0}
    assert any("raw counts" in n and "'Counts'" in n for n in exp.notes)


@pytest.mark.parametrize("header", ["Well", "well", "Pos", "Position", "Well ID", "WellPosition", "Well_ID"])
def test_well_list_well_headers(tmp_path, header):
    exp = read_export(write(tmp_path, f"{header},CPM\nA01,5\nB12,6\n"))
    assert cpm_of(exp) == {"A1": 5.0, "B12": 6.0}


@pytest.mark.parametrize("header", ["CPM", "cpm", "CCPM", "CCPM1", "CPM1", "Cr-51 CPM", "Counts", "Count"])
def test_well_list_count_headers(tmp_path, header):
    exp = read_export(write(tmp_path, f"Well\t{header}\nA1\t5\n"))
    assert cpm_of(exp) == {"A1": 5.0}
    assert header in exp.notes[0]


def test_well_list_prefers_cpm_over_counts(tmp_path):
    exp = read_export(write(tmp_path, "Well,Counts,CPM\nA1,100,50\n"))
    assert cpm_of(exp) == {"A1": 50.0}
    assert exp.notes[0] == "used CPM column 'CPM'; ignored 'Counts'"


def test_well_list_prefers_well_over_pos(tmp_path):
    exp = read_export(write(tmp_path, "Pos,Well,CPM\n1,A1,5\n2,A2,6\n"))
    assert cpm_of(exp) == {"A1": 5.0, "A2": 6.0}


def test_well_list_thousands_not_misread(tmp_path):
    # tab file: '1,234' is a thousands separator (decimal point by default), with a note
    exp = read_export(write(tmp_path, "Well\tCPM\nA1\t1,234\nA2\t12,345,678\n"))
    assert cpm_of(exp) == {"A1": 1234.0, "A2": 12345678.0}
    assert any("decimal mark '.'" in n for n in exp.notes)
    # tab file where another cell proves ',' is the decimal mark
    exp = read_export(write(tmp_path, "Well\tCPM\nA1\t1,234\nA2\t2,5\n"))
    assert cpm_of(exp) == {"A1": 1.234, "A2": 2.5}
    # ';' file: '.' is a thousands separator
    exp = read_export(write(tmp_path, "Well;CPM\nA1;1.234\nA2;1.234.567,5\n"))
    assert cpm_of(exp) == {"A1": 1234.0, "A2": 1234567.5}
    # quoted decimal comma in a ','-delimited file: '12,34' cannot be a thousands separator
    exp = read_export(write(tmp_path, 'Well,CPM\nA1,"12,34"\nA2,7\n'))
    assert cpm_of(exp) == {"A1": 12.34, "A2": 7.0}
    # ';' file without other evidence: ',' is the decimal mark, so '1.234' is 1234
    exp = read_export(write(tmp_path, "Well;CPM\nA1;1.234\nA2;5\n"))
    assert cpm_of(exp) == {"A1": 1234.0, "A2": 5.0}
    assert any("decimal mark ','" in n for n in exp.notes)
    # ';' file with decimal points (no commas) is read with '.'
    exp = read_export(write(tmp_path, "Well;CPM\nA1;1234.5\nA2;0.25\n"))
    assert cpm_of(exp) == {"A1": 1234.5, "A2": 0.25}


def test_well_list_footer_after_blank_line_ignored(tmp_path):
    exp = read_export(write(tmp_path, "Well,CPM\nA1,5\n\nEnd of report\n"))
    assert cpm_of(exp) == {"A1": 5.0}
    assert any("ignored" in n for n in exp.notes)


def test_utf16_with_bom(tmp_path):
    path = write(tmp_path, "\ufeffWell\tCPM\nA1\t12,5\nH12\t3\n", encoding="utf-16-le")
    assert cpm_of(read_export(path)) == {"A1": 12.5, "H12": 3.0}
    path = write(tmp_path, "Well,CPM\nA1,1.5\n", "be.csv", encoding="utf-16")  # BOM written by the codec
    assert cpm_of(read_export(path)) == {"A1": 1.5}


# ---------------------------------------------------------------------------------------- grid


def test_grid_blocks_choose_cpm():
    exp = read_export(EXPORTS / "plate_grid_blocks.csv")
    assert exp.format == "plate_grid"
    cpm = cpm_of(exp)
    assert len(cpm) == 95 and "H12" not in cpm  # blank cell -> no well
    assert cpm["A1"] == 1.5 and cpm["B1"] == 101.5 and cpm["H11"] == 711.5
    assert list(exp.counts["well"][:13]) == [f"A{c}" for c in range(1, 13)] + ["B1"]
    assert any("2 blocks" in n and "'CPM'" in n for n in exp.notes)


def test_grid_block_by_name():
    exp = read_export(EXPORTS / "plate_grid_blocks.csv", block="counts")
    cpm = cpm_of(exp)
    assert len(cpm) == 96 and cpm["A1"] == 1001.0 and cpm["H12"] == 1712.0


def test_grid_unknown_block_name():
    raises(EXPORTS / "plate_grid_blocks.csv", "no grid block named 'DPM'", "'Counts'", "'CPM'", block="DPM")


def test_grid_several_blocks_without_cpm_uses_first(tmp_path):
    text = grid_text("Run 1") + "\n" + grid_text("Run 2", value=lambda r, c: "7")
    exp = read_export(write(tmp_path, text))
    assert cpm_of(exp)["A1"] == 1.0
    assert any("used 'Run 1'" in n and "first" in n for n in exp.notes)
    exp = read_export(write(tmp_path, text), block="Run 2")
    assert set(cpm_of(exp).values()) == {7.0}


def test_grid_single_block_semicolon_decimal_comma_title_line(tmp_path):
    text = "Plate 3 CPM\n" + grid_text("", sep=";", value=lambda r, c: f"{r},{c}5")
    exp = read_export(write(tmp_path, text))
    cpm = cpm_of(exp)
    assert len(cpm) == 96 and cpm["A1"] == 0.15 and cpm["H12"] == 7.125
    assert exp.notes == ()


def test_grid_tab_ignores_name(tmp_path):
    exp = read_export(write(tmp_path, grid_text("Counts", sep="\t"), "grid.csv"))
    assert exp.format == "plate_grid" and cpm_of(exp)["C4"] == 204.0


def test_grid_missing_rows(tmp_path):
    raises(write(tmp_path, grid_text(rows="ABCDEF")), "row G missing", "end of the file", "truncated")


def test_grid_missing_row_in_middle(tmp_path):
    text = grid_text().replace("C,", "X,")
    raises(write(tmp_path, text), "line 4", "expected row C", "'X'")


def test_grid_short_row(tmp_path):
    text = grid_text().rstrip("\n")
    text = text[: text.rindex(",")]  # H row loses its last cell
    raises(write(tmp_path, text), "line 9", "row H", "11 of 12", "truncated")


def test_grid_unquoted_comma_is_an_error(tmp_path):
    text = grid_text(value=lambda r, c: "1,5" if (r, c) == (0, 3) else "1")
    raises(write(tmp_path, text), "line 2", "row A", "13 values", "unquoted ','")


def test_grid_blocks_back_to_back_named_by_corner_or_title(tmp_path):
    text = "Raw\n" + grid_text("") + grid_text("ccpm", value=lambda r, c: "9")  # no blank line between
    exp = read_export(write(tmp_path, text))
    assert set(cpm_of(exp).values()) == {9.0}
    assert exp.notes == ("2 blocks ('Raw', 'ccpm'); used 'ccpm' (name contains 'cpm')",)
    assert cpm_of(read_export(write(tmp_path, text), block="raw"))["B3"] == 103.0


def test_grid_non_numeric_cell(tmp_path):
    text = grid_text(value=lambda r, c: "OVER" if (r, c) == (2, 5) else "1")
    raises(write(tmp_path, text), "line 4", "well C5", "'OVER'", "not a number")


def test_grid_negative_cell(tmp_path):
    text = grid_text(value=lambda r, c: "-3" if (r, c) == (7, 12) else "1")
    raises(write(tmp_path, text), "line 9", "well H12", "negative")


# ---------------------------------------------------------------------------------------- xlsx


def test_xlsx_well_list_on_second_sheet(tmp_path):
    wb = openpyxl.Workbook()
    wb.active.title = "Info"
    wb.active.append(["Protocol", "Cr-51 release"])
    ws = wb.create_sheet("Data")
    ws.append(["Exported 2024-03-05"])
    ws.append([])
    ws.append(["Well", "Counts", "CCPM1"])
    ws.append(["A01", 1203, 1187.5])
    ws.append(["B02", 1250, 1240])
    ws.append(["H12", 5000, "4.975,5"])  # text cell with European formatting
    path = tmp_path / "export.xlsx"
    wb.save(path)
    with pytest.raises(InputError, match="mix decimal marks"):  # 1187.5 and 4.975,5 disagree
        read_export(path)
    ws["C6"] = "4975"
    wb.save(path)
    exp = read_export(path)
    assert exp.format == "xlsx/well_list"
    assert cpm_of(exp) == {"A1": 1187.5, "B2": 1240.0, "H12": 4975.0}
    assert "sheet 'Data'" in exp.notes[0] and any("CCPM1" in n for n in exp.notes)


def test_xlsx_grid(tmp_path):
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Plate"
    for name, base in (("Counts", 1000), ("CPM", 0)):
        ws.append([name] + list(range(1, 13)))
        for r, letter in enumerate(ROWS):
            ws.append([letter] + [base + 100 * r + c + 0.25 for c in range(1, 13)])
        ws.append([])
    ws["M9"] = None  # row 9 = H row of the first block (Counts): H12 blank
    path = tmp_path / "grid.XLSX"
    wb.save(path)
    exp = read_export(path)
    assert exp.format == "xlsx/plate_grid"
    cpm = cpm_of(exp)
    assert len(cpm) == 96 and cpm["A1"] == 1.25 and cpm["H12"] == 712.25
    counts = cpm_of(read_export(path, block="Counts"))
    assert len(counts) == 95 and "H12" not in counts and counts["A2"] == 1002.25


def test_xlsx_bad_cell_names_sheet_row(tmp_path):
    wb = openpyxl.Workbook()
    wb.active.title = "S1"
    for row in (["Well", "CPM"], ["A1", 5], ["A2", -1]):
        wb.active.append(row)
    wb.save(tmp_path / "neg.xlsx")
    raises(tmp_path / "neg.xlsx", "sheet 'S1'", "row 3", "well A2", "negative")


def test_xlsx_wizard2_rejected(tmp_path):
    wb = openpyxl.Workbook()
    for line in W4821.read_text().splitlines()[:3]:
        wb.active.append(line.split(","))
    wb.save(tmp_path / "w2.xlsx")
    raises(tmp_path / "w2.xlsx", "row 1", "Wizard2", "CSV export")


def test_xlsx_without_table(tmp_path):
    wb = openpyxl.Workbook()
    wb.active.append(["nothing", "here"])
    wb.save(tmp_path / "empty.xlsx")
    raises(tmp_path / "empty.xlsx", "unrecognised format", "no sheet")


def test_xlsx_corrupt(tmp_path):
    path = tmp_path / "bad.xlsx"
    path.write_bytes(b"PK\x03\x04" + b"\x01" * 200)
    raises(path, "not a readable .xlsx")


# ---------------------------------------------------------------------------------------- file-level errors


def test_missing_file(tmp_path):
    raises(tmp_path / "nope.csv", "nope.csv", "file not found")


def test_directory(tmp_path):
    raises(tmp_path, "not a regular file")


def test_empty_file(tmp_path):
    raises(write(tmp_path, ""), "empty")


def test_blank_lines_only(tmp_path):
    raises(write(tmp_path, "\n  \n,,,\n"), "no data")


def test_too_large_checked_before_reading(tmp_path, monkeypatch):
    path = write(tmp_path, "Well,CPM\n" + "A1,5\n" * 100)

    def no_open(*args, **kwargs):
        raise AssertionError("file opened although it is too large")

    monkeypatch.setattr(builtins, "open", no_open)
    raises(path, "more than the limit of 100 bytes", max_bytes=100)


def test_binary_nul_bytes(tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    raises(path, "binary content")


def test_binary_control_characters(tmp_path):
    raises(write(tmp_path, "Well,CPM\nA1,5\x07\n"), "binary content", "line 2")


def test_utf16_without_bom(tmp_path):
    raises(write(tmp_path, "Well,CPM\nA1,5\n", encoding="utf-16-le"), "NUL bytes", "byte-order mark")


def test_not_utf8(tmp_path):
    path = write(tmp_path, "Well,CPM\nA1,5\nOperator: Müller\n", encoding="latin-1")
    raises(path, "not UTF-8", "0xFC", "line 3")


def test_unrecognised(tmp_path):
    raises(
        write(tmp_path, "Sample,Value\nx,1\n"),
        "unrecognised format",
        "no well/CPM columns",
        "no 8×12 grid",
        "no Wizard2 columns",
    )


# ---------------------------------------------------------------------------------------- content errors


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("Well,CPM\nA1,5\nA2\n", ["line 3", "1 cells", "header (line 1) has 2", "truncated"]),
        ("Well,CPM\nA1,abc\n", ["line 2", "well A1", "'abc'", "not a number"]),
        ("Well,CPM\nA1,\n", ["line 2", "well A1", "no count value"]),
        ("Well,CPM\nA1,5\nB7,nan\n", ["line 3", "well B7", "not a finite number"]),
        ("Well,CPM\nB7,inf\n", ["line 2", "well B7", "not a finite number"]),
        ("Well,CPM\nB7,1e999\n", ["line 2", "well B7", "not a finite number"]),
        ("Well,CPM\nC3,-12.5\n", ["line 2", "well C3", "'-12.5'", "negative"]),
        ("Well,CPM\nA1,5\nB1,6\nA01,7\n", ["line 4", "well A1", "twice", "line 2"]),
        ("Well,CPM\nI1,5\n", ["line 2", "'I1'", "outside", "A1–H12"]),
        ("Well,CPM\nA13,5\n", ["line 2", "'A13'", "outside"]),
        ("Well,CPM\nA1,5\nTotal,5\n", ["line 3", "'Total'", "not a well id"]),
        ("Well,CPM\n,5\n", ["line 2", "no well id"]),
        ("Well,CPM\n", ["line 1", "no data rows"]),
        ("Well;CPM\nA1;1234.5\nA2;12,5\n", ["mix decimal marks", "'1234.5' (line 2)", "'12,5' (line 3)"]),
        ("Well,CPM\nA1,1,234\n", ["line 2", "3 cells", "has 2", "unquoted ','"]),  # thousands not mis-read
        ('Well,CPM\nA1,"12,34.5"\n', ["line 2", "'12,34.5'", "not a number"]),  # bad thousands grouping
    ],
)
def test_well_list_errors(tmp_path, text, fragments):
    raises(write(tmp_path, text), *fragments)


def test_only_input_errors_on_truncation(tmp_path):
    """Cutting any fixture at any point gives a result or an InputError, never another exception."""
    for fixture in [W4821, EXPORTS / "well_list_preamble.csv", EXPORTS / "well_list_semicolon.csv"]:
        data = fixture.read_bytes()
        for cut in range(0, len(data), 7):
            path = tmp_path / "cut.csv"
            path.write_bytes(data[:cut])
            try:
                read_export(path)
            except InputError:
                pass


def test_export_is_frozen():
    exp = read_export(W4821)
    with pytest.raises(AttributeError):
        exp.format = "x"  # type: ignore[misc]
    assert isinstance(exp.counts, pd.DataFrame) and isinstance(exp.notes, tuple)
