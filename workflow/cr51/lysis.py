"""Counts + layout → wells, and % specific lysis.

% specific lysis of a well = 100 · (CPM − S̄) / (M̄ − S̄), with S̄ and M̄ the means of the plate's
spontaneous- and maximum-release wells that are not excluded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .schema import LYSIS, WELLS

if TYPE_CHECKING:
    from .ingest import Export
    from .layout import Layout

CONDITION = ["role", "lot", "conc", "et_ratio"]

#: Dixon's Q, 95 % critical values for n = 3..10 (Rorabacher, Anal. Chem. 1991, 63, 139).
DIXON_Q95 = {3: 0.970, 4: 0.829, 5: 0.710, 6: 0.625, 7: 0.568, 8: 0.526, 9: 0.493, 10: 0.466}


class PlateError(ValueError):
    """A plate whose counts cannot give a specific lysis; ``str(exc)`` is the reason."""


def join_counts(layout: Layout, export: Export, *, source_file: str, source_sha256: str) -> pd.DataFrame:
    """One row per layout well (and per export well/tube the layout does not define), in plate
    order A1, A2, …, H12; counts for tubes the layout does not map come last."""
    lw = layout.wells
    counts = export.counts
    tube_export = counts["well"].isna().all() and len(counts) > 0
    if tube_export and lw["rack"].isna().all():
        raise PlateError(
            "the export identifies tubes by Rack/Pos, but the layout does not say which "
            'tube holds which well: add [expt] tubes = "rows" (and rack_size) or rack/pos '
            "fields to the layout"
        )
    matched = _match_counts(lw, counts, tube_export)
    if matched is None:
        return _join_counts_outer(layout, export, tube_export, source_file=source_file, source_sha256=source_sha256)
    found, cpm = matched
    exclude = lw["exclude"].to_numpy(bool) & found
    reasons = lw["exclude_reason"].tolist()
    wells = lw.assign(
        plate=layout.plate,
        cpm=cpm,
        excluded=~found | exclude,
        exclusion_reason=[
            "no count in the export" if not f else (_layout_exclusion(r) if x else "")
            for f, x, r in zip(found.tolist(), exclude.tolist(), reasons)
        ],
        source_file=source_file,
        source_sha256=source_sha256,
        outlier=False,
        lysis_pct=np.nan,
    )
    order = np.lexsort((lw["col"].to_numpy(), [ord(r) for r in lw["row"].tolist()]))
    return _with_counter(wells.take(order), export, tube_export)[list(WELLS.names)].reset_index(drop=True)


def _match_counts(lw: pd.DataFrame, counts: pd.DataFrame, tube_export: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """Each layout well's count, when every export row belongs to exactly one layout well:
    (found, cpm) aligned with ``lw``. None otherwise (extra, repeated or missing keys), where
    :func:`_join_counts_outer` lists every unmatched row."""
    if tube_export:
        left = list(zip(lw["rack"].tolist(), lw["pos"].tolist()))
        right = list(zip(counts["rack"].astype(float).tolist(), counts["pos"].astype(float).tolist()))
    else:
        left, right = lw["well"].tolist(), counts["well"].tolist()
    if any(_has_nan(k) for k in (*left, *right)):
        return None
    cpm_of = dict(zip(right, counts["cpm"].astype(float).tolist()))
    if len(cpm_of) != len(right) or len(set(left)) != len(left) or not set(cpm_of) <= set(left):
        return None
    found = np.array([k in cpm_of for k in left], dtype=bool)
    return found, np.array([cpm_of.get(k, np.nan) for k in left], dtype=float)


def _layout_exclusion(reason: str) -> str:
    """exclusion_reason of a well the layout excludes (with the layout's reason, if any)."""
    return f"excluded in the layout: {reason}" if reason else "excluded in the layout"


def _has_nan(key: object) -> bool:
    parts = key if isinstance(key, tuple) else (key,)
    return any(v is None or v != v for v in parts)


def _join_counts_outer(
    layout: Layout, export: Export, tube_export: bool, *, source_file: str, source_sha256: str
) -> pd.DataFrame:
    """:func:`join_counts` by an outer merge: also lists export rows no layout well takes."""
    lw = layout.wells
    counts = export.counts
    if tube_export:
        c = counts[["rack", "pos", "cpm"]].astype({"rack": float, "pos": float})
        merged = lw.merge(c, on=["rack", "pos"], how="outer", indicator=True)
        extra_reason = "tube not mapped to a well by the layout"
    else:
        merged = lw.merge(counts[["well", "cpm"]], on="well", how="outer", indicator=True)
        extra_reason = "well in the export but without a role in the layout"
    merged["excluded"] = False
    merged["exclusion_reason"] = ""
    only_export = merged["_merge"] == "right_only"
    only_layout = merged["_merge"] == "left_only"
    merged.loc[only_export, ["excluded", "exclusion_reason"]] = [True, extra_reason]
    merged.loc[only_export, "role"] = ""
    merged.loc[only_layout, ["excluded", "exclusion_reason"]] = [True, "no count in the export"]
    manual = merged["exclude"].fillna(False).astype(bool) & ~only_layout
    merged.loc[manual, "excluded"] = True
    merged.loc[manual, "exclusion_reason"] = merged.loc[manual, "exclude_reason"].map(_layout_exclusion)
    merged["plate"] = layout.plate
    merged["source_file"] = source_file
    merged["source_sha256"] = source_sha256
    merged["outlier"] = False
    merged["lysis_pct"] = np.nan
    merged["well"] = merged["well"].fillna("")
    # plate order A1, A2, …, H12; counts for tubes the layout does not map come last
    order = merged["well"].map(lambda w: (ord(w[0]), int(w[1:])) if w else (999, 0))
    merged = merged.iloc[sorted(range(len(merged)), key=order.iloc.__getitem__)]
    return _with_counter(merged, export, tube_export)[list(WELLS.names)].reset_index(drop=True)


def _with_counter(wells: pd.DataFrame, export: Export, tube_export: bool) -> pd.DataFrame:
    """``wells`` with the counter's verdict on each well's tube (``counter_info``, ``counter_error_pct``):
    from a Wizard2 export's Info and Error % columns, by rack and pos; empty / NaN otherwise."""
    info, error = [""] * len(wells), [np.nan] * len(wells)
    counter = getattr(export, "counter", None)  # an export-like object without the counter's verdicts: none
    if counter is not None and tube_export:

        def tubes(df: pd.DataFrame) -> list[tuple[float, float]]:
            return list(zip(df["rack"].astype(float).tolist(), df["pos"].astype(float).tolist()))

        verdicts = zip(counter["counter_info"].tolist(), counter["counter_error_pct"].tolist())
        of = dict(zip(tubes(export.counts), verdicts))
        found = [of.get(tube, ("", np.nan)) for tube in tubes(wells)]
        info, error = [i for i, _ in found], [e for _, e in found]
    return wells.assign(counter_info=info, counter_error_pct=np.asarray(error, dtype=float))


def conditions(wells: pd.DataFrame) -> dict[tuple, list[int]]:
    """Row positions of the usable wells (not excluded, counted, with a role) by condition.

    A condition is (role, lot, conc, E:T); missing values are one key (``None``), so all
    untreated wells at one E:T are one condition. Plain Python: a plate has ~30 conditions,
    where a pandas groupby costs more than the work.
    """
    use = (~wells["excluded"].to_numpy(bool)) & wells["cpm"].notna().to_numpy() & (wells["role"] != "").to_numpy()
    cols = [wells[c].tolist() for c in CONDITION]
    groups: dict[tuple, list[int]] = {}
    for i in np.flatnonzero(use):
        key = tuple(None if pd.isna(col[i]) else col[i] for col in cols)
        groups.setdefault(key, []).append(int(i))
    return groups


#: An outlier must also differ from its nearest replicate by more than this many Poisson SDs of the two
#: counts (SD of a difference of Poisson counts a, b: sqrt(a + b)), so that counting noise never makes one.
POISSON_SDS = 3.0


def flag_outliers(
    wells: pd.DataFrame, *, exclude: bool, tolerance_pct: float, q_table: dict[int, float] = DIXON_Q95
) -> pd.DataFrame:
    """Flag replicate outliers per condition: Dixon's Q (n = 3..10, 95 %) *and* a practical departure.

    The single most extreme CPM of a condition is an outlier when all three hold:

    1. Dixon's Q, its gap to the nearest value divided by the range, exceeds the critical Q
       (Rorabacher 1991);
    2. the gap exceeds :data:`POISSON_SDS` Poisson SDs of the two counts, ``3 sqrt(a + b)``;
    3. the gap exceeds ``tolerance_pct`` % of the mean of the other replicates (pipetting).

    Conditions 2 and 3 are the practical significance USP <1010> asks of a statistical outlier: with
    counters printing whole CPM, ties are common (1280 / 1280 / 1281 gives Q = 1.000 > 0.970, yet a
    gap of 1 CPM), and a tie or a gap within counting and pipetting noise never makes an outlier.
    Flagged wells are excluded only when ``exclude`` is true; either way they are marked in the
    ``outlier`` column.
    """
    wells = wells.reset_index(drop=True)
    cpm = wells["cpm"].to_numpy(float)
    outlier = wells["outlier"].to_numpy(bool).copy()
    excluded = wells["excluded"].to_numpy(bool).copy()
    reason = wells["exclusion_reason"].tolist()
    for rows in conditions(wells).values():
        n = len(rows)
        if n not in q_table:
            continue
        order = np.array(rows)[np.argsort(cpm[rows], kind="stable")]
        vals = cpm[order]
        spread = vals[-1] - vals[0]
        if spread <= 0:
            continue
        q_low = (vals[1] - vals[0]) / spread
        q_high = (vals[-1] - vals[-2]) / spread
        if q_low >= q_high:
            q, idx, value, nearest, others = q_low, order[0], vals[0], vals[1], vals[1:]
        else:
            q, idx, value, nearest, others = q_high, order[-1], vals[-1], vals[-2], vals[:-1]
        gap = abs(value - nearest)
        poisson = POISSON_SDS * np.sqrt(max(value, 0.0) + max(nearest, 0.0))
        practical = tolerance_pct / 100.0 * abs(float(np.mean(others)))
        if q > q_table[n] and gap > poisson and gap > practical:
            outlier[idx] = True
            if exclude:
                excluded[idx] = True
                reason[idx] = (
                    f"Dixon Q outlier (Q = {q:.3f} > {q_table[n]:.3f}, n = {n}; {gap:.0f} CPM from its neighbour)"
                )
    return wells.assign(outlier=outlier, excluded=excluded, exclusion_reason=reason)


def control_means(wells: pd.DataFrame) -> tuple[float, float]:
    """Means (S̄, M̄) of the spontaneous and maximum wells that are not excluded."""
    ok = ~wells["excluded"] & wells["cpm"].notna()
    s = wells.loc[ok & (wells["role"] == "spontaneous"), "cpm"]
    m = wells.loc[ok & (wells["role"] == "maximum"), "cpm"]
    missing = [name for name, v in (("spontaneous", s), ("maximum", m)) if v.empty]
    if missing:
        raise PlateError(
            "no usable " + " or ".join(missing) + " release wells: the plate needs both "
            "controls to compute specific lysis"
        )
    s_mean, m_mean = float(s.mean()), float(m.mean())
    if m_mean <= s_mean:
        raise PlateError(
            f"maximum release ({m_mean:.1f} CPM) is not above spontaneous release "
            f"({s_mean:.1f} CPM): check the control wells"
        )
    return s_mean, m_mean


def specific_lysis(cpm: pd.Series | np.ndarray | float, s_mean: float, m_mean: float):
    """% specific lysis = 100 · (cpm − S̄)/(M̄ − S̄)."""
    return 100.0 * (cpm - s_mean) / (m_mean - s_mean)


def add_lysis(wells: pd.DataFrame, s_mean: float, m_mean: float) -> pd.DataFrame:
    """Per-well % specific lysis (NaN for background wells and wells without a count)."""
    wells = wells.copy()
    lys = specific_lysis(wells["cpm"].astype(float), s_mean, m_mean)
    wells["lysis_pct"] = lys.where(wells["role"].isin(["spontaneous", "maximum", "sample", "vehicle"]))
    return wells


def summarise(wells: pd.DataFrame) -> pd.DataFrame:
    """lysis.csv rows: one per condition (role, lot, conc, E:T) over the wells not excluded."""
    wells = wells.reset_index(drop=True)
    cpm = wells["cpm"].to_numpy(float)
    lysis = wells["lysis_pct"].to_numpy(float)
    plate = wells["plate"].iloc[0] if len(wells) else ""
    rows = []
    for (role, lot, conc, et), idx in conditions(wells).items():
        c, ly = cpm[idx], lysis[idx]
        n = len(idx)
        sd = float(np.std(c, ddof=1)) if n > 1 else np.nan
        lsd = float(np.std(ly, ddof=1)) if n > 1 else np.nan
        mean = float(np.mean(c))
        cv = 100.0 * sd / mean if mean > 0 else np.nan
        rows.append((plate, role, lot, conc, et, n, mean, sd, cv, float(np.mean(ly)), lsd))
    out = pd.DataFrame(rows, columns=list(LYSIS.names))
    order = {r: i for i, r in enumerate(["spontaneous", "maximum", "background", "sample", "vehicle"])}
    out = out.sort_values(
        by=["role", "lot", "et_ratio", "conc"],
        key=lambda s: s.map(order) if s.name == "role" else s,
        na_position="first",
    )
    return out.reset_index(drop=True)
