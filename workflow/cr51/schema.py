"""The result tables' contract: every table's columns in order and their kinds, the vocabularies
(well roles, file and QC statuses, QC flags) and the plate geometry. Standard library only.

Other tools read these tables (``config/README.md`` and ``README.md`` document them for users), so
a column's name, place and kind are a contract. Writers conform their frames to :data:`TABLES`
(:func:`cr51.tables.conform`) and readers read by it (:func:`cr51.tables.read_table`); no module
keeps its own column list.

Kinds
-----
``text``
    ids and words; never parsed as a number or as missing (a lot may be called ``NA`` or ``007``);
    an empty cell is missing.
``float``
    a number; an empty cell is missing (NaN).
``int``
    a whole number (counts, degrees of freedom); an empty cell is missing.
``bool``
    ``True`` / ``False``, never missing.
``boolean``
    ``True`` / ``False``, or empty when the verdict does not exist (e.g. no equivalence test).
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("text", "float", "int", "bool", "boolean")


@dataclass(frozen=True)
class Column:
    """One column of a result table."""

    name: str
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"column {self.name!r}: unknown kind {self.kind!r}")


@dataclass(frozen=True)
class Table:
    """A result table: its name (``<name>.csv``) and its columns in order."""

    name: str
    columns: tuple[Column, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """The column names, in order."""
        return tuple(c.name for c in self.columns)

    @property
    def kinds(self) -> dict[str, str]:
        """{column: kind}."""
        return {c.name: c.kind for c in self.columns}

    @property
    def text(self) -> tuple[str, ...]:
        """The text columns."""
        return tuple(c.name for c in self.columns if c.kind == "text")


def _cols(spec: str) -> tuple[Column, ...]:
    """Columns from ``"name:kind name:kind ..."`` (kind ``float`` when left out)."""
    out = []
    for item in spec.split():
        name, _, kind = item.partition(":")
        out.append(Column(name, kind or "float"))
    return tuple(out)


# Column groups that more than one stage fills (potency.csv is built in three steps).
#: potency.csv: what :func:`cr51.potency.analyse_plate` computes per lot.
POTENCY_OWN = _cols(
    "plate:text lot:text reference_lot:text rp rp_lo rp_hi parallel_f_p slope_ratio slope_ratio_lo "
    "slope_ratio_hi equivalent:boolean p_vs_reference p_holm status:text reason:text df:int"
)
#: potency.csv: the lot's excipient-only effect (vehicle wells), after :data:`POTENCY_OWN`.
POTENCY_VEHICLE = _cols("vehicle_suppression_pct vehicle_flag:text")
#: potency.csv: the joint parallel fit's curve of the lot, so that the report can draw it.
POTENCY_JOINT = _cols("joint_slope joint_bottom joint_top joint_f joint_e joint_e_ref")
#: potency.csv: the pairwise free fit's ln slope ratio and bottom difference with standard errors (what the
#: campaign's similarity combines) and whether the lot is in the plate's final joint parallel fit.
POTENCY_SIMILARITY = _cols(
    "log_slope_ratio log_slope_ratio_se bottom_diff bottom_diff_se similarity_df:int in_joint:boolean"
)
#: potency.csv: the status of each Fieller interval (:data:`CI_STATUSES`), after the other columns.
POTENCY_CI = _cols("ci:text slope_ratio_ci:text")

FILES = Table("files", _cols("file:text sha256:text bytes:int status:text plate:text reason:text"))
WELLS = Table(
    "wells",
    _cols(
        "plate:text well:text role:text lot:text conc et_ratio cpm excluded:bool exclusion_reason:text "
        "source_file:text source_sha256:text product:text rack pos lysis_pct outlier:bool counter_info:text "
        "counter_error_pct"
    ),
)
LYSIS = Table(
    "lysis",
    _cols("plate:text role:text lot:text conc et_ratio n:int cpm_mean cpm_sd cv_pct lysis_pct lysis_sd"),
)
QC = Table(
    "qc",
    _cols(
        "plate:text spontaneous_cpm maximum_cpm spontaneous_pct_of_max untreated_lysis_pct lu20_per_1e7 "
        "vehicle_suppression_pct status:text flags:text donor:text date:text reference_lot:text "
        "targets_per_well lu_a lu_k study:text spontaneous_cv_pct maximum_cv_pct max_over_spontaneous reason:text"
    ),
)
FITS = Table(
    "fits",
    _cols(
        "plate:text lot:text model:text slope bottom top ic50 ic50_se ic50_lo ic50_hi rss df:int aicc "
        "converged:bool message:text plausible:boolean plausibility:text"
    ),
)
POTENCY = Table("potency", POTENCY_OWN + POTENCY_VEHICLE + POTENCY_JOINT + POTENCY_SIMILARITY + POTENCY_CI)
LOTS_DIFFER = Table("lots_differ", _cols("plate:text f df1:int df2:int p"))
POTENCY_COMBINED = Table(
    "potency_combined",
    _cols("lot:text reference_lot:text n_plates:int rp rp_lo rp_hi homogeneity_chi2 homogeneity_p method:text"),
)
PLATE_HISTORY = Table(
    "plate_history",
    _cols(
        "plate:text version:int layout_sha256:text export_sha256:text templates_sha256:text admitted_at:text "
        "accepted_at:text replaced_at:text current:bool lot:text rp rp_lo rp_hi status:text"
    ),
)
POTENCY_COMBINED_INPUTS = Table(
    "potency_combined_inputs",
    _cols("plate:text lot:text reference_lot:text rp rp_lo rp_hi included:bool reason:text"),
)
CAMPAIGN_INPUTS = Table(
    "campaign_inputs",
    _cols(
        "campaign:text plate:text lot:text log_ic50 included:bool reason:text reference_lot:text study:text product:text"
    ),
)
CAMPAIGN_LOTS = Table(
    "campaign_lots",
    _cols(
        "campaign:text reference_lot:text lot:text product:text n_plates:int rp rp_lo rp_hi group:text "
        "log_ic50_diff log_ic50_diff_se df:int"
    ),
)
CAMPAIGN_PAIRS = Table(
    "campaign_pairs",
    _cols("campaign:text lot_a:text lot_b:text ratio ratio_lo ratio_hi p_adj method:text estimate se df:int t_ratio"),
)
CAMPAIGN_TESTS = Table(
    "campaign_tests",
    _cols("campaign:text test:text statistic df1:int df2:int p note:text sigma2_between sigma2_residual"),
)
CAMPAIGN_SIMILARITY = Table(
    "campaign_similarity",
    _cols(
        "campaign:text reference_lot:text lot:text n_plates:int slope_ratio slope_ratio_lo slope_ratio_hi "
        "bottom_diff bottom_diff_lo bottom_diff_hi top_diff top_diff_lo top_diff_hi slope_ratio_margin_lo "
        "slope_ratio_margin_hi bottom_margin top_margin verdict:text method:text"
    ),
)
#: trends.csv (cr51.trends): per plate × monitored quantity, its value, the series' control limits and the
#: Westgard rules it breaks (``rule``, ``;``-separated, empty when none); docs/trends.md.
TRENDS = Table(
    "trends",
    _cols(
        "plate:text date:text quantity:text value mean sd rule:text series:text z warning:text baseline:bool "
        "n_baseline:int limits:text"
    ),
)
#: The campaign tables (cr51.campaign), written by the collect job.
CAMPAIGN_TABLES = (CAMPAIGN_INPUTS, CAMPAIGN_LOTS, CAMPAIGN_PAIRS, CAMPAIGN_TESTS, CAMPAIGN_SIMILARITY)

#: Every result table by name, in the order the pipeline writes them.
TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        FILES, WELLS, LYSIS, QC, FITS, POTENCY, LOTS_DIFFER, POTENCY_COMBINED, POTENCY_COMBINED_INPUTS,
        PLATE_HISTORY, *CAMPAIGN_TABLES, TRENDS,
    )
}  # fmt: skip
#: The tables each plate contributes rows to (a batch job writes these; collect concatenates them).
PLATE_TABLES = ("files", "wells", "lysis", "qc", "fits", "potency", "lots_differ")

# --------------------------------------------------------------------------
# Vocabularies
# --------------------------------------------------------------------------

#: Well roles a layout may give (``role`` in wells.csv and lysis.csv).
ROLES = ("spontaneous", "maximum", "sample", "background", "vehicle")
#: ``status`` of files.csv: ``ok`` (part of an accepted plate), ``rejected`` (with the reason),
#: ``pending`` (waiting: settling, or for its partner file), ``stale`` (pending for longer than
#: ``stale_after_hours``), ``duplicate`` (same export bytes as an accepted plate), ``retracted``
#: (a ``<plate>.retract`` file, and the plate's files), ``gone`` (an accepted plate's file no longer in
#: the drop folder: the plate stays, from the archive), ``ignored`` (not read: sub-folder, link, hidden…).
FILE_STATUSES = ("ok", "rejected", "pending", "stale", "duplicate", "retracted", "gone", "ignored")
#: ``status`` of qc.csv.
QC_STATUSES = ("pass", "fail")
#: ``status`` of potency.csv.
POTENCY_STATUSES = ("ok", "failed")
#: potency.csv ``ci`` (relative potency) and ``slope_ratio_ci``: the Fieller interval is ``bounded`` (both
#: limits given), ``unbounded`` (the denominator is not significantly different from 0, Fieller's
#: g >= 1, or the set is not an interval: the limits are left empty) or ``not computed`` (no fit).
CI_STATUSES = ("bounded", "unbounded", "not computed")
#: trends.csv ``limits``: ``fixed`` (the series has its full baseline, ``trends.baseline_plates``; rules are
#: evaluated) or ``provisional`` (fewer plates: mean and SD of the plates so far, no rule evaluated).
TREND_LIMITS = ("fixed", "provisional")
#: qc.csv ``flags`` (``;``-separated) and what each means, in words (shown in the report).
FLAGS = {
    "SPONTANEOUS_HIGH": "spontaneous release is above the allowed share of maximum release",
    "CONTROL_CV_HIGH": "the spontaneous or maximum release replicates vary more than the control CV limit",
    "CONTROL_OUTLIER": "a spontaneous or maximum release well is an outlier and is not excluded",
    "RANGE_LOW": "maximum release is too few times spontaneous release to give a usable lysis range",
    "CV_HIGH": "at least one condition's replicate CV is above the limit",
    "OUTLIER": "a replicate well is a Dixon Q outlier beyond counting and pipetting noise (see wells.csv)",
    "EXCLUDED_WELLS": "some wells are excluded (see wells.csv for the reasons)",
    "MISSING_WELLS": "layout wells have no count in the export",
    "EXTRA_WELLS": "the export has wells or tubes the layout does not define",
    "NO_UNTREATED": "no untreated sample wells (conc 0): no top of the suppression curve",
    "LU_NOT_ESTIMABLE": "lytic units could not be estimated from the E:T titration",
    "NO_TARGETS_PER_WELL": "[expt] targets_per_well is not given: no lytic units",
    "VEHICLE_SUPPRESSION": "a lot's vehicle alone suppresses lysis more than the limit",
    "COUNTER_INFO": "the counter flagged the tube of a used well (Info, e.g. I on a near-empty tube with a large "
    "counting error; see counter_info and counter_error_pct in wells.csv)",
    "LAYOUT_OVERLAP": "two tables of the same kind in the layout set the same field of a well (see files.csv)",
    "DESIGN_MISMATCH": "a lot's concentrations differ from the reference's, or are too few (see potency.csv)",
}
#: Flags that fail a plate (``status = fail``; qc.csv ``reason`` says why in words).
FAILING_FLAGS = ("SPONTANEOUS_HIGH", "CONTROL_CV_HIGH", "CONTROL_OUTLIER", "RANGE_LOW")

# --------------------------------------------------------------------------
# Plate geometry (96-well plate)
# --------------------------------------------------------------------------

ROWS = "ABCDEFGH"
COLUMNS = tuple(range(1, 13))
#: Every well in plate order: A1, A2, …, A12, B1, …, H12.
WELLS_IN_ORDER = tuple(f"{r}{c}" for r in ROWS for c in COLUMNS)
