"""Process plates one by one inside a batch job: raw files → wells, lysis, QC (:func:`ingest_batch`),
then wells → fits, potency, lots_differ (:func:`analyse_batch`).

A plate's problem never stops the batch: it becomes a ``rejected`` row in ``files.csv`` with
the reason, and the other plates go on (:func:`rejected_tables`: what any exception while processing a
plate becomes). Each plate is processed on its own, so its results do
not depend on which batch it is in.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .digests import file_digest
from .ingest import InputError, read_export
from .layout import LayoutError, load_layout
from .lysis import (
    PlateError,
    add_lysis,
    control_means,
    flag_outliers,
    join_counts,
    summarise,
)
from .points import design_problems, fit_points
from .potency import PotencyConfig, analyse_plate
from .qc import plate_qc, vehicle_suppression
from .schema import FILES, FITS, LOTS_DIFFER, LYSIS, POTENCY, QC, WELLS
from .settings import Analysis
from .tables import concat_frames

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlateInput:
    """The files of one plate, as the scan found them."""

    name: str
    layout: str
    export: str
    includes: tuple[str, ...] = ()  # layout templates the layout includes (for the plate cache key)
    digest: str = ""  # the scan's content digest of these files ('' = compute it when needed)
    version: int = 0  # the archived version (cr51.archive); 0: files straight from a folder
    shas: tuple[str, str] = ("", "")  # expected sha256 of layout and export ("": not checked)
    notes: tuple[tuple[str, tuple[str, str]], ...] = ()  # files.csv status/reason per file name
    fallback: tuple[int, str, str, tuple[str, ...]] | None = None  # version kept if this one is refused

    @classmethod
    def from_params(cls, p: dict) -> PlateInput:
        """From the batch rule's ``plates`` parameter (lists where the scan had tuples)."""
        fb = p.get("fallback")
        return cls(
            name=p["name"],
            layout=p["layout"],
            export=p["export"],
            includes=tuple(p.get("includes", ())),
            digest=p.get("digest", ""),
            version=int(p.get("version", 0)),
            shas=tuple(p.get("shas", ("", ""))),
            notes=tuple((n, (st, why)) for n, (st, why) in p.get("notes", ())),
            fallback=None if fb is None else (int(fb[0]), fb[1], fb[2], tuple(fb[3])),
        )

    def fallback_input(self) -> PlateInput | None:
        """The plate's accepted version, to keep when this version is refused (``None``: none)."""
        if self.fallback is None:
            return None
        version, layout, export, includes = self.fallback
        return PlateInput(self.name, layout, export, tuple(includes), version=version)


@dataclass
class BatchTables:
    """The tables one batch job writes."""

    files: list[dict] = field(default_factory=list)
    wells: list[pd.DataFrame] = field(default_factory=list)
    lysis: list[pd.DataFrame] = field(default_factory=list)
    qc: list[dict] = field(default_factory=list)

    def frames(self) -> dict[str, pd.DataFrame]:
        """The four tables as DataFrames with their columns in contract order."""

        return {
            "files": pd.DataFrame(self.files, columns=list(FILES.names)),
            "wells": concat_frames(self.wells, WELLS.names),
            "lysis": concat_frames(self.lysis, LYSIS.names),
            "qc": pd.DataFrame(self.qc, columns=list(QC.names)),
        }


def _digests(plate: PlateInput, max_export_bytes: int) -> tuple[str, int, str, int]:
    """(layout sha256, bytes, export sha256, bytes); a file that cannot be read (removed mid-run) has
    sha256 "" and 0 bytes, and an export over the size limit is not read ("": refused unread)."""
    try:
        layout_sha, layout_bytes = file_digest(plate.layout)
    except OSError:
        layout_sha, layout_bytes = "", 0
    try:
        export_bytes = os.stat(plate.export).st_size
        export_sha = "" if export_bytes > max_export_bytes else file_digest(plate.export)[0]
    except OSError:
        export_sha, export_bytes = "", 0
    return layout_sha, layout_bytes, export_sha, export_bytes


def rejected_tables(plate: PlateInput, reason: str, max_export_bytes: int) -> dict[str, pd.DataFrame]:
    """The tables of a plate refused with ``reason`` for both its files (the per-plate guard of
    :func:`cr51.batch.process_batch`: whatever goes wrong with one plate is that plate's reason)."""
    layout_sha, layout_bytes, export_sha, export_bytes = _digests(plate, max_export_bytes)
    rows = [
        dict(file=Path(f).name, sha256=sha, bytes=size, status="rejected", plate=plate.name, reason=reason)
        for f, sha, size in ((plate.layout, layout_sha, layout_bytes), (plate.export, export_sha, export_bytes))
    ]
    tables = BatchTables(files=rows).frames()
    tables.update(
        {
            name: concat_frames([], table.names)
            for name, table in (("fits", FITS), ("potency", POTENCY), ("lots_differ", LOTS_DIFFER))
        }
    )
    return tables


def ingest_plate(plate: PlateInput, settings: Analysis, out: BatchTables) -> None:
    """Read one plate and append its rows to ``out`` (rejected plates only to ``files``)."""
    # an export over the size limit is refused by read_export without being read at all
    layout_sha, layout_bytes, export_sha, export_bytes = _digests(plate, settings.max_export_bytes)
    damaged = [
        n for n, sha, want in zip(("layout", "export"), (layout_sha, export_sha), plate.shas) if want and sha != want
    ]
    layout_name, export_name = Path(plate.layout).name, Path(plate.export).name

    def files_rows(status: str, reason_layout: str, reason_export: str) -> None:
        out.files.append(
            dict(file=layout_name, sha256=layout_sha, bytes=layout_bytes, status=status,
                 plate=plate.name, reason=reason_layout)
        )  # fmt: skip
        out.files.append(
            dict(file=export_name, sha256=export_sha, bytes=export_bytes, status=status,
                 plate=plate.name, reason=reason_export)
        )  # fmt: skip

    if damaged:
        msg = f"the archived {' and '.join(damaged)} of version {plate.version} no longer match their sha256: restore the archive"
        files_rows("rejected", msg, msg)
        return
    try:
        layout = load_layout(plate.layout, layouts_dir=settings.layouts_dir, max_bytes=settings.max_layout_bytes)
        export = read_export(
            plate.export,
            max_bytes=settings.max_export_bytes,
            nuclide=settings.counter.nuclide,
            max_unzipped_bytes=settings.max_xlsx_unzipped_bytes,
        )
        wells = join_counts(layout, export, source_file=export_name, source_sha256=export_sha)
        if settings.outliers.rule == "dixon_q":
            wells = flag_outliers(
                wells, exclude=settings.outliers.exclude, tolerance_pct=settings.outliers.tolerance_pct
            )
        s_mean, m_mean = control_means(wells)
        wells = add_lysis(wells, s_mean, m_mean)
        lysis = summarise(wells)
        points, _ = fit_points(wells, settings.fit.et_ratio)
        design = design_problems(points, layout.reference_lot, settings.potency.min_concentrations)
        qc = plate_qc(
            wells, lysis, layout.expt, s_mean, m_mean, settings.qc,
            layout_warnings=layout.warnings, design_problems=design,
        )  # fmt: skip
    except LayoutError as err:
        files_rows("rejected", f"layout: {err}", f"its layout was refused: {err}")
        return
    except InputError as err:
        files_rows("rejected", f"its export was refused: {err}", f"export: {err}")
        return
    except PlateError as err:
        files_rows("rejected", str(err), str(err))
        return
    except Exception as err:  # noqa: BLE001 - a bug must not stop the other plates
        log.exception("plate %r: unexpected error", plate.name)
        msg = f"internal error while reading this plate ({type(err).__name__}); see the log"
        files_rows("rejected", msg, msg)
        return
    note = "; ".join(export.notes)
    files_rows("ok", layout_warning(layout.warnings), f"{export.format}" + (f"; {note}" if note else ""))
    out.wells.append(wells)
    out.lysis.append(lysis)
    out.qc.append(qc)


def layout_warning(warnings: tuple[str, ...] | list[str]) -> str:
    """files.csv reason of an accepted layout with overlapping tables ('' when it has none)."""
    return "LAYOUT_OVERLAP: " + "; ".join(warnings) if warnings else ""


def ingest_batch(plates: list[PlateInput], settings: Analysis) -> dict[str, pd.DataFrame]:
    """Ingest every plate of a batch; returns the files, wells, lysis and qc tables."""
    out = BatchTables()
    for plate in plates:
        ingest_plate(plate, settings, out)
    return out.frames()


def with_vehicle(potency: pd.DataFrame, wells: pd.DataFrame, limit_pct: float) -> pd.DataFrame:
    """Add each lot's largest vehicle-only suppression (%, over its concentrations) and a flag.

    ``vehicle_flag`` is ``VEHICLE_SUPPRESSION`` when that suppression exceeds ``limit_pct``
    (config ``qc.max_vehicle_suppression_pct``), else empty. Lots without vehicle wells get NaN.
    """
    veh = vehicle_suppression(wells)
    if veh.empty:  # no vehicle wells (most layouts)
        pct = pd.Series(np.nan, index=potency.index)
    else:
        per_lot = veh.groupby("lot")["vehicle_suppression_pct"].max()
        pct = potency["lot"].map(per_lot).astype(float)
    flag = ["VEHICLE_SUPPRESSION" if v > limit_pct else "" for v in pct.tolist()]  # NaN: no flag
    return potency.assign(vehicle_suppression_pct=pct, vehicle_flag=pd.Series(flag, index=potency.index, dtype="str"))


def _by_plate(wells: pd.DataFrame) -> Iterable[tuple[object, pd.DataFrame]]:
    """``wells.groupby("plate", sort=True)``'s (plate, wells) pairs; a frame of one plate (what a batch
    job's plates are, one at a time) as itself, not as a copy of its rows: the same rows, index and
    values."""
    plates = wells["plate"].unique()
    if len(plates) == 1 and isinstance(plates[0], str):
        return [(plates[0], wells)]
    return wells.groupby("plate", sort=True)


def analyse_batch(wells: pd.DataFrame, qc: pd.DataFrame, settings: Analysis) -> dict[str, pd.DataFrame]:
    """fits, potency and lots_differ tables for every plate of a batch."""
    cfg = PotencyConfig.from_settings(settings)
    et_cfg = settings.fit.et_ratio
    veh_limit = settings.qc.max_vehicle_suppression_pct
    refs = dict(zip(qc["plate"], qc["reference_lot"]))
    fits, potency, differ = [], [], []
    for plate, grp in _by_plate(wells):
        points, _ = fit_points(grp, et_cfg)
        ref = refs.get(plate)
        if points["lot"].notna().sum() == 0:
            continue  # a plate without lot wells (e.g. an E:T titration only) has no curves
        tables = analyse_plate(points, str(plate), "" if pd.isna(ref) else str(ref), cfg)
        fits.append(tables.fits)
        potency.append(with_vehicle(tables.potency, grp, veh_limit).merge(tables.joint, on="lot", how="left"))
        differ.append(tables.lots_differ)

    return {
        "fits": concat_frames(fits, FITS.names),
        "potency": concat_frames(potency, POTENCY.names),
        "lots_differ": concat_frames(differ, LOTS_DIFFER.names),
    }
