"""Page and figure file names: readable, stable, never colliding (issue 14 names, issue 17 pages)."""

import unicodedata

from cr51.report.names import campaign_page, file_stem, lot_page, plate_page


def test_names_that_share_a_slug_get_different_files():
    assert file_stem("run#1") != file_stem("run_1")
    assert file_stem("run#1").startswith("run_1-")


def test_the_same_id_always_gets_the_same_file_and_nfd_is_nfc():
    nfc = "Zürich-01"
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    assert file_stem(nfc) == file_stem(nfd) == file_stem(nfc)


def test_names_are_safe_relative_paths():
    for hostile in ("../../etc/passwd", "/abs", ".hidden", "a\u202eb", "x" * 500, ""):
        stem = file_stem(hostile)
        assert "/" not in stem and not stem.startswith(".")
        assert len(stem) <= 71
        assert all(c.isascii() and (c.isalnum() or c in "._-") for c in stem)
    assert plate_page("P1").startswith("plates/") and plate_page("P1").endswith(".html")
    assert lot_page("L1").startswith("lots/") and campaign_page("C1").startswith("campaigns/")
