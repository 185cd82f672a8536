"""Assay monitoring over assay date: control limits from a baseline and Westgard rules per plate.

USP <1032> (*Design and Development of Biological Assays*, assay monitoring) asks that a bioassay's
performance be followed over time; the tools are the clinical laboratory's: a Levey–Jennings chart
per monitored quantity (the value of every plate by assay date, the historical mean and ±2/±3 SD) and
Westgard's multirule (Westgard, Barry, Hunt & Groth, *Clin. Chem.* 1981, 27:493–501). Here the
reference lot plays the control material and the plate's controls its own QC. docs/trends.md has the
method, its sources and every decision.

Quantities (:data:`QUANTITIES`), one value per plate that passed QC (``qc.csv`` ``status = pass``) and
has an ISO 8601 assay date:

* from ``fits.csv`` (the potency model, the plate's reference lot; converged fits not marked
  implausible): the reference lot's ln IC50, slope, top and bottom — one series per reference lot
  (different reference lots are different materials);
* from ``qc.csv``: untreated lysis (%), spontaneous release (% of maximum) and the donor's lytic
  units LU20 per 10^7 effectors (:func:`cr51.qc.lytic_units_per_1e7`, already computed per plate) —
  one series over all plates (their limits hold the donor-to-donor variation).

Per series (plates in date order, ties by plate name):

* **baseline**: the first ``trends.baseline_plates`` plates. Mean and SD (n − 1) over them; a baseline
  plate more than 3 SD from that mean is dropped from the baseline (one pass, not refilled; its row
  says ``baseline = False`` and it is judged like every plate), and mean and SD are computed again
  from the rest. ``n_baseline`` is how many remain.
* **fewer plates than** ``trends.baseline_plates``: the limits are ``provisional`` (mean and SD of the
  plates so far, shown on the chart) and no rule is evaluated: nothing is flagged until the baseline
  is complete. Then the limits are ``fixed`` and stay so while the baseline plates are unchanged.
* **rules**, with z = (value − mean) / SD, evaluated on every plate of a series with fixed limits, in
  date order, "consecutive" meaning consecutive plates of the same series: ``1-3s`` |z| > 3;
  ``2-2s`` this and the previous plate beyond 2 SD on the same side; ``R-4s`` this and the previous
  plate differ by more than 4 SD; ``4-1s`` four consecutive beyond 1 SD on the same side; ``10-x``
  ten consecutive on the same side of the mean (z = 0 is on neither side). A rule is broken at the
  plate that completes it (the run Westgard's rules would reject), and at every later plate that
  continues it; so a plate's verdict depends only on the baseline and on the plates up to it, and a
  new plate never changes an older plate's verdict. ``warning`` is ``1-2s`` (|z| > 2), Westgard's
  warning rule, shown but not a verdict. An SD of 0 (all baseline values equal) gives no z and no rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .schema import TREND_LIMITS, TRENDS
from .settings import Trends


@dataclass(frozen=True)
class Quantity:
    """A monitored quantity: where its value comes from and how it is labelled."""

    label: str
    unit: str
    source: str  # "fits" (the reference lot's fit) or "qc"
    column: str  # the column of ``source``
    log: bool = False  # value = ln(column); the chart's axis is labelled in the column's own unit


#: The monitored quantities, in the order trends.csv lists them.
QUANTITIES: dict[str, Quantity] = {
    "ref_log_ic50": Quantity("reference lot IC50", "mg/mL", "fits", "ic50", log=True),
    "ref_slope": Quantity("reference lot slope", "", "fits", "slope"),
    "ref_top": Quantity("reference lot top", "% lysis", "fits", "top"),
    "ref_bottom": Quantity("reference lot bottom", "% lysis", "fits", "bottom"),
    "untreated_lysis_pct": Quantity("untreated lysis", "% lysis", "qc", "untreated_lysis_pct"),
    "spontaneous_pct_of_max": Quantity("spontaneous release", "% of maximum", "qc", "spontaneous_pct_of_max"),
    "lu20_per_1e7": Quantity("donor LU20", "per 10^7 effectors", "qc", "lu20_per_1e7"),
}

#: Westgard's rules that can be configured (``trends.rules``), in the order trends.csv lists them.
#: Run rules are (SD limit k, n consecutive plates beyond k on the same side); ``R-4s`` is a range.
RUN_RULES: dict[str, tuple[float, int]] = {"1-3s": (3.0, 1), "2-2s": (2.0, 2), "4-1s": (1.0, 4), "10-x": (0.0, 10)}
RULES = ("1-3s", "2-2s", "R-4s", "4-1s", "10-x")
#: The warning rule (never a verdict): one plate beyond 2 SD.
WARNING = "1-2s"
#: A baseline plate further than this many SD from the first-pass baseline mean leaves the baseline.
BASELINE_TRIM_SD = 3.0


# --------------------------------------------------------------------------
# Rules on a z series
# --------------------------------------------------------------------------


def _run_length(hit: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Length of the run of consecutive ``hit`` ending at each point (0 where not hit); runs restart at
    ``starts`` (the first point of each series)."""
    idx = np.arange(hit.size)
    reset = np.where(~hit, idx, np.where(starts, idx - 1, -1))
    return idx - np.maximum.accumulate(reset) if hit.size else idx


def rule_hits(
    z: Sequence[float] | np.ndarray, rules: Sequence[str], starts: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Where each rule is broken on the series of z scores ``z`` (in date order).

    Parameters
    ----------
    z
        (value − mean) / SD of consecutive plates; NaN where there is none (such a point breaks no
        rule and interrupts every run).
    rules
        Names from :data:`RULES` and/or :data:`WARNING`.
    starts
        True at the first point of each series when ``z`` holds several series one after another
        (default: one series).

    Returns
    -------
    dict
        {rule: boolean array}, True at every plate that completes or continues the rule's pattern.
    """
    z = np.asarray(z, dtype=float)
    starts = np.zeros(z.size, bool) if starts is None else np.asarray(starts, bool).copy()
    if z.size:
        starts[0] = True
    out = {}
    for rule in rules:
        if rule == "R-4s":
            prev = np.concatenate([[np.nan], z[:-1]])
            prev[starts] = np.nan
            with np.errstate(invalid="ignore"):
                out[rule] = np.abs(z - prev) > 4.0
            continue
        k, n = (2.0, 1) if rule == WARNING else RUN_RULES[rule]
        with np.errstate(invalid="ignore"):
            high, low = z > k, z < -k
        out[rule] = (_run_length(high, starts) >= n) | (_run_length(low, starts) >= n)
    return out


# --------------------------------------------------------------------------
# Values per plate and the trends table
# --------------------------------------------------------------------------


def _is(values: pd.Series, flag: bool) -> np.ndarray:
    """Where a boolean-like column (bool, pandas boolean, or text read back from a CSV) is ``flag``."""
    if values.dtype == bool:
        return values.to_numpy() == flag
    return (values.astype(str).str.lower() == str(flag).lower()).to_numpy(bool)


def plate_values(qc: pd.DataFrame, fits: pd.DataFrame, model: str) -> pd.DataFrame:
    """Every monitored value: one row per accepted plate with a date × quantity with a value.

    Parameters
    ----------
    qc
        qc.csv (``plate, status, date, reference_lot`` and the QC quantities).
    fits
        fits.csv; the rows of ``model`` (the potency model, ``fit.models[0]``) for the plate's
        reference lot, converged and not marked implausible, give the reference lot's quantities.
    model
        The potency model.

    Returns
    -------
    pandas.DataFrame
        ``plate, date (YYYY-MM-DD), quantity, series, value``, sorted as trends.csv is.
    """
    cols = ["plate", "date", "quantity", "series", "value"]
    if qc.empty:
        return pd.DataFrame(columns=cols)
    dates = pd.to_datetime(qc["date"].astype("string"), format="ISO8601", errors="coerce")
    keep = (qc["status"].astype(str) == "pass").to_numpy() & dates.notna().to_numpy()
    plates = pd.DataFrame({
        "plate": qc["plate"].astype(str).to_numpy()[keep],
        "date": dates[keep].dt.strftime("%Y-%m-%d").to_numpy(),
        "reference_lot": qc["reference_lot"].astype("string").fillna("").to_numpy()[keep],
    })  # fmt: skip
    parts = []
    for name, q in QUANTITIES.items():
        if q.source != "qc":
            continue
        v = pd.to_numeric(qc[q.column], errors="coerce").to_numpy(float)[keep]
        parts.append(plates.assign(quantity=name, series="", value=v))
    mine = fits.loc[(fits["model"].astype(str) == model).to_numpy()]
    mine = mine[["plate", "lot", "ic50", "slope", "top", "bottom", "converged", "plausible"]]
    ref = plates.merge(
        mine.astype({"plate": str, "lot": str}), left_on=["plate", "reference_lot"], right_on=["plate", "lot"]
    )
    ref = ref[_is(ref["converged"], True) & ~_is(ref["plausible"], False)].drop_duplicates(["plate"])
    for name, q in QUANTITIES.items():
        if q.source != "fits":
            continue
        v = pd.to_numeric(ref[q.column], errors="coerce").to_numpy(float)
        if q.log:
            with np.errstate(divide="ignore", invalid="ignore"):
                v = np.where(v > 0, np.log(v), np.nan)
        parts.append(
            ref[["plate", "date", "reference_lot"]].assign(quantity=name, series=ref["reference_lot"], value=v)
        )
    out = pd.concat(parts, ignore_index=True)
    out = out[np.isfinite(out["value"].to_numpy(float))]
    order = {name: i for i, name in enumerate(QUANTITIES)}
    out = out.assign(_q=out["quantity"].map(order)).sort_values(["_q", "series", "date", "plate"], kind="stable")
    return out[cols].reset_index(drop=True)


def trends_table(qc: pd.DataFrame, fits: pd.DataFrame, cfg: Trends, model: str = "LL.4") -> pd.DataFrame:
    """trends.csv: every monitored value with its series' limits and the rules it breaks.

    Parameters
    ----------
    qc, fits
        qc.csv and fits.csv as collect has them (or as read back with :func:`cr51.tables.read_table`).
    cfg
        ``trends:`` settings: the rules and the number of baseline plates.
    model
        The potency model (``fit.models[0]``).

    Returns
    -------
    pandas.DataFrame
        :data:`cr51.schema.TRENDS`' columns, one row per plate × quantity, sorted by quantity
        (:data:`QUANTITIES` order), series, date, plate. The method: the module docstring.
    """
    v = plate_values(qc, fits, model)
    if v.empty:
        return pd.DataFrame(columns=list(TRENDS.names))
    group = (v["quantity"] + "\x00" + v["series"]).to_numpy()
    starts = np.r_[True, group[1:] != group[:-1]]
    gid = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    pos = np.arange(len(v)) - first[gid]
    size = np.diff(np.r_[first, len(v)])[gid]
    value = v["value"].to_numpy(float)
    n_groups = first.size

    def stats(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = np.bincount(gid[mask], minlength=n_groups).astype(float)
        s1 = np.bincount(gid[mask], weights=value[mask], minlength=n_groups)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = s1 / n
            dev = value - mean[gid]
            ss = np.bincount(gid[mask], weights=(dev * dev)[mask], minlength=n_groups)
            sd = np.sqrt(ss / (n - 1))
        return mean, np.where(n >= 2, sd, np.nan), n

    first_pass = pos < cfg.baseline_plates
    mean1, sd1, _ = stats(first_pass)
    with np.errstate(invalid="ignore", divide="ignore"):
        trimmed = first_pass & (np.abs(value - mean1[gid]) > BASELINE_TRIM_SD * sd1[gid])
    baseline = first_pass & ~trimmed
    mean_g, sd_g, n_g = stats(baseline)
    mean, sd = mean_g[gid], sd_g[gid]
    fixed = size >= cfg.baseline_plates
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(sd > 0, (value - mean) / sd, np.nan)
    judged = np.where(fixed, z, np.nan)  # provisional limits: no rule
    hits = rule_hits(judged, [r for r in RULES if r in cfg.rules] + [WARNING], starts)
    rule = np.full(len(v), "", dtype=object)
    for name in RULES:
        if name in cfg.rules:
            rule = np.where(hits[name], rule + ";" + name, rule)
    rule = np.array([r[1:] for r in rule], dtype=object)
    return pd.DataFrame({
        "plate": v["plate"].to_numpy(object),
        "date": v["date"].to_numpy(object),
        "quantity": v["quantity"].to_numpy(object),
        "value": value,
        "mean": mean,
        "sd": sd,
        "rule": rule,
        "series": v["series"].to_numpy(object),
        "z": z,
        "warning": np.where(hits[WARNING], WARNING, "").astype(object),
        "baseline": baseline,
        "n_baseline": n_g[gid].astype(np.int64),
        "limits": np.where(fixed, TREND_LIMITS[0], TREND_LIMITS[1]).astype(object),
    }, columns=list(TRENDS.names))  # fmt: skip


def flagged_plates(trends: pd.DataFrame) -> pd.DataFrame:
    """The rows of trends.csv that break a rule (``rule`` not empty), latest first (ties: plate, quantity)."""
    broken = trends[trends["rule"].fillna("").astype(str) != ""]
    order = {name: i for i, name in enumerate(QUANTITIES)}
    return (
        broken.assign(_q=broken["quantity"].map(order))
        .sort_values(["date", "plate", "_q"], ascending=[False, True, True], kind="stable")
        .drop(columns="_q")
        .reset_index(drop=True)
    )
