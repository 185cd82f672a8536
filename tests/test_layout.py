"""Layouts: the issue's example loads; fields are validated; includes stay inside allowed folders."""

import tempfile
from pathlib import Path

import pandas as pd
import pytest

from cr51 import layout as layout_mod
from cr51.layout import LayoutError, load_layout

EXAMPLE = """
[meta]
path = "run_0423.csv"
[expt]
reference_lot = "REF-001"
donor = "D07"
[row.A]
role = "sample"
lot = "REF-001"
et_ratio = 50
{rows}
[block.1x6.A1]
conc = 0.03
[block.1x6.A7]
conc = 0.03
[block.1x6.A2]
conc = 0.1
[block.1x6.A8]
conc = 0.1
[block.1x6.A3]
conc = 0.3
[block.1x6.A9]
conc = 0.3
[block.1x6.A4]
conc = 1
[block.1x6.A10]
conc = 1
[block.1x6.A5]
conc = 3
[block.1x6.A11]
conc = 3
[block.1x6.A6]
conc = 10
[block.1x6.A12]
conc = 10
[block.4x1.G1]
role = "spontaneous"
[block.4x1.G5]
role = "maximum"
[block.4x1.G9]
role = "sample"
conc = 0
et_ratio = 50
[block.3x1.H1]
role = "sample"
conc = 0
et_ratio = 50
[block.3x1.H4]
role = "sample"
conc = 0
et_ratio = 25
[block.3x1.H7]
role = "sample"
conc = 0
et_ratio = 12.5
[block.3x1.H10]
role = "sample"
conc = 0
et_ratio = 6.25
"""
ROWS = "".join(f'[row.{r}]\nrole = "sample"\nlot = "LOT-{r}"\net_ratio = 50\n' for r in "BCDEF")


def make(tmp_path, text, name="plate.toml", export="run_0423.csv"):
    (tmp_path / export).write_text("")
    p = tmp_path / name
    p.write_text(text)
    return p


def test_issue_example_loads(tmp_path, layouts_dir):
    lay = load_layout(make(tmp_path, EXAMPLE.format(rows=ROWS)), layouts_dir=layouts_dir)
    w = lay.wells.set_index("well")
    assert len(w) == 96 and lay.plate == "plate" and lay.export_name == "run_0423.csv"
    assert lay.reference_lot == "REF-001" and lay.expt["donor"] == "D07"
    assert (w.loc["A1", "role"], w.loc["A1", "lot"], w.loc["A1", "conc"]) == ("sample", "REF-001", 0.03)
    assert (w.loc["F12", "lot"], w.loc["F12", "conc"], w.loc["F12", "et_ratio"]) == ("LOT-F", 10, 50)
    assert list(w.loc[["G1", "G4", "G5", "G8"], "role"]) == ["spontaneous"] * 2 + ["maximum"] * 2
    assert w.loc["G9", "conc"] == 0 and pd.isna(w.loc["G9", "lot"])
    assert list(w.loc[["H1", "H4", "H7", "H10", "H12"], "et_ratio"]) == [50, 25, 12.5, 6.25, 6.25]
    assert w["role"].value_counts().to_dict() == {"sample": 88, "spontaneous": 4, "maximum": 4}


def test_template_include_and_unused_rows(tmp_path, layouts_dir):
    text = (
        '[meta]\npath = "e.csv"\ninclude = "standard_96.toml"\n[expt]\nreference_lot = "R1"\n'
        '[row.A]\nrole = "sample"\nlot = "R1"\net_ratio = 50\n'
    )
    lay = load_layout(make(tmp_path, text, export="e.csv"), layouts_dir=layouts_dir)
    # rows B-F of the template carry conc but no role: not assay wells
    assert set(lay.wells["row"]) == {"A", "G", "H"}
    assert lay.expt["targets_per_well"] == 10000
    assert lay.includes == (str(layouts_dir / "standard_96.toml"),)


@pytest.mark.parametrize(
    "snippet, message",
    [
        ('[well.A1]\nrole = "killer"\n', "unknown role"),
        ('[well.A1]\nrole = "sample"\nlot = "L"\nconc = 1\n', "et_ratio"),
        ('[well.A1]\nrole = "sample"\nconc = 1\net_ratio = 50\n', "needs a lot"),
        ('[well.A1]\nrole = "sample"\nlot = "L"\nconc = "lots"\net_ratio = 50\n', "not a number"),
        ('[well.A1]\nrole = "sample"\nlot = "L"\nconc = -1\net_ratio = 50\n', "negative"),
        ('[well.A1]\nrole = "vehicle"\nconc = 1\net_ratio = 50\n', "vehicle well needs a lot"),
        ('[well.A1]\nrole = "sample"\nlot = "=HYPERLINK(1)"\nconc = 1\net_ratio = 50\n', "formula"),
        ('[well.A1]\nrole = "sample"\nlot = "-2+3"\nconc = 1\net_ratio = 50\n', "formula"),
        ('[expt]\ndonor = "@SUM(A1)"\n[well.A1]\nrole = "spontaneous"\n', "formula"),
        ("[well.A1]\nconc = 1\n", "no well has a role"),
    ],
)
def test_bad_fields_are_refused_with_reason(tmp_path, layouts_dir, snippet, message):
    with pytest.raises(LayoutError, match=message):
        load_layout(make(tmp_path, '[meta]\npath = "e.csv"\n' + snippet, export="e.csv"), layouts_dir=layouts_dir)


def test_include_outside_allowed_folders_is_refused(tmp_path, layouts_dir):
    sub = tmp_path / "drop"
    sub.mkdir()
    (tmp_path / "secret.toml").write_text('[well.A1]\nrole = "maximum"\n')
    for inc in ("../secret.toml", str(tmp_path / "secret.toml")):
        p = make(sub, f'[meta]\npath = "e.csv"\ninclude = "{inc}"\n[well.A2]\nrole = "spontaneous"\n', export="e.csv")
        with pytest.raises(LayoutError, match="bare file name"):
            load_layout(p, layouts_dir=layouts_dir)


def test_manual_exclusion_and_numeric_lot(tmp_path, layouts_dir):
    text = (
        '[meta]\npath = "e.csv"\n[well.A1]\nrole = "sample"\nlot = 12345\nconc = 1\net_ratio = 50\n'
        'exclude = true\nexclude_reason = "bubble"\n'
    )
    w = load_layout(make(tmp_path, text, export="e.csv"), layouts_dir=layouts_dir).wells.iloc[0]
    assert w["lot"] == "12345" and bool(w["exclude"]) and w["exclude_reason"] == "bubble"


def test_tube_mapping_rows_and_columns(tmp_path, layouts_dir):
    base = '[meta]\npath = "e.csv"\n[expt]\ntubes = "{order}"\nrack_size = 10\n[block.12x2.A1]\nrole = "spontaneous"\n'
    lay = load_layout(make(tmp_path, base.format(order="rows"), export="e.csv"), layouts_dir=layouts_dir)
    w = lay.wells.set_index("well")
    assert (w.loc["A1", "rack"], w.loc["A1", "pos"]) == (1, 1)
    assert (w.loc["A10", "rack"], w.loc["A10", "pos"]) == (1, 10)
    assert (w.loc["A11", "rack"], w.loc["A11", "pos"]) == (2, 1)
    assert (w.loc["B1", "rack"], w.loc["B1", "pos"]) == (2, 3)  # 13th tube
    lay = load_layout(make(tmp_path, base.format(order="columns"), export="e.csv"), layouts_dir=layouts_dir)
    w = lay.wells.set_index("well")
    assert (w.loc["B1", "rack"], w.loc["B1", "pos"]) == (1, 2)
    assert (w.loc["A2", "rack"], w.loc["A2", "pos"]) == (1, 3)
    with pytest.raises(LayoutError, match="tubes"):
        load_layout(make(tmp_path, base.format(order="diagonal"), export="e.csv"), layouts_dir=layouts_dir)


@pytest.fixture
def ram_folder(tmp_path, monkeypatch):
    """A folder standing in for the RAM file system wellmap's copy of a layout is staged in."""
    ram = tmp_path / "ram"
    ram.mkdir()
    monkeypatch.setattr(layout_mod, "RAM_FOLDER", str(ram))
    return ram


def staged_export(tmp_path, layouts_dir) -> Path:
    """Where wellmap saw the export of the issue's example (the staging folder), after loading it."""
    path = make(tmp_path, EXAMPLE.format(rows=ROWS))
    raw = layout_mod._load_wellmap(path, path.read_bytes(), {}, "run_0423.csv")
    return Path(raw["path"].iloc[0])


def test_layouts_are_staged_in_the_ram_folder_and_removed(tmp_path, layouts_dir, ram_folder):
    export = staged_export(tmp_path, layouts_dir)
    assert export.name == "run_0423.csv" and export.parent.parent == ram_folder.resolve()
    assert not export.parent.exists() and list(ram_folder.iterdir()) == []


def test_staging_falls_back_to_the_temporary_folder(tmp_path, layouts_dir, ram_folder, monkeypatch):
    monkeypatch.setattr(layout_mod, "RAM_FOLDER", str(tmp_path / "no such folder"))
    export = staged_export(tmp_path, layouts_dir)
    assert export.parent.parent == Path(tempfile.gettempdir()).resolve() and not export.parent.exists()
    refuse = layout_mod._stage_in

    def full(root, *args):  # a RAM folder that takes no more files (ENOSPC)
        if root is not None:
            raise OSError(28, "No space left on device")
        return refuse(root, *args)

    monkeypatch.setattr(layout_mod, "RAM_FOLDER", str(ram_folder))
    monkeypatch.setattr(layout_mod, "_stage_in", full)
    export = staged_export(tmp_path, layouts_dir)
    assert export.parent.parent == Path(tempfile.gettempdir()).resolve() and list(ram_folder.iterdir()) == []
    lay = load_layout(make(tmp_path, EXAMPLE.format(rows=ROWS)), layouts_dir=layouts_dir)
    assert len(lay.wells) == 96


@pytest.mark.parametrize("ram", [True, False])
def test_wellmap_reasons_name_the_layout_never_the_staging_folder(tmp_path, layouts_dir, ram_folder, monkeypatch, ram):
    if not ram:
        monkeypatch.setattr(layout_mod, "RAM_FOLDER", str(tmp_path / "no such folder"))
    bad = '[meta]\npath = "e.csv"\n[block.AxB.A1]\nrole = "sample"\n'
    with pytest.raises(LayoutError) as err:
        load_layout(make(tmp_path, bad, name="run_7.toml", export="e.csv"), layouts_dir=layouts_dir)
    assert str(err.value).startswith("wellmap could not read the layout: run_7.toml: Unknown [block] size 'AxB'")
    assert "cr51-layout" not in str(err.value) and "/" not in str(err.value)


def test_rack_and_pos_on_every_well_or_on_none(tmp_path, layouts_dir):
    head = '[meta]\npath = "e.csv"\n[block.2x1.A1]\nrole = "spontaneous"\n'
    both = head + "[well.A1]\nrack = 1\npos = 1\n[well.A2]\nrack = 1\npos = 2\n"
    lay = load_layout(make(tmp_path, both, export="e.csv"), layouts_dir=layouts_dir)
    tubes = lay.wells.set_index("well")[["rack", "pos"]].to_dict("index")
    assert tubes == {"A1": {"rack": 1.0, "pos": 1.0}, "A2": {"rack": 1.0, "pos": 2.0}}
    for partial in ("[well.A1]\nrack = 1\npos = 1\n", "[well.A1]\npos = 1\n", "[well.A1]\nrack = 2\n"):
        with pytest.raises(LayoutError, match="either every well or no well may give rack and pos"):
            load_layout(make(tmp_path, head + partial, export="e.csv"), layouts_dir=layouts_dir)
    assert load_layout(make(tmp_path, head, export="e.csv"), layouts_dir=layouts_dir).wells["rack"].isna().all()
