"""The campaign's numbers equal R's (Debian r-base-core, r-cran-emmeans, r-cran-pbkrtest, r-cran-lme4;
tools/setup-system.sh installs them): on the included rows of campaign_inputs.csv, complete and
incomplete blocks, the lots-differ F test equals ``anova(lm(...))`` and every pair equals
``emmeans(..., pairwise ~ lot, adjust = "tukey")`` to 1e-6 relative; products vs lots within products
equals ``lmer(y ~ product + (1 | lot) + (1 | plate))`` with Kenward-Roger (pbkrtest); the shared-top
free model's RSS equals R ``nls``. One Rscript run for the whole module."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from cr51 import campaign, fit, potency

RSCRIPT = shutil.which("Rscript")
pytestmark = pytest.mark.skipif(RSCRIPT is None, reason="Rscript not installed (tools/setup-system.sh installs it)")

LOTS = ["REF", "A", "B", "C", "D"]


def _campaign_rows(seed: int, drop: int = 0) -> pd.DataFrame:
    """Simulated ln IC50 rows: 8 plates x 5 lots, plate effects, lot effects; ``drop`` rows removed."""
    rng = np.random.default_rng(seed)
    lot_eff = dict(zip(LOTS, [0.0, 0.1, -0.3, 0.25, 0.05]))
    rows = [
        (f"P{p}", lot, 0.5 + lot_eff[lot] + plate + rng.normal(0, 0.12))
        for p, plate in enumerate(rng.normal(0, 0.4, 8))
        for lot in LOTS
    ]
    data = pd.DataFrame(rows, columns=["plate", "lot", "log_ic50"])
    if drop:
        gone = rng.choice(np.flatnonzero(data["lot"] != "REF"), drop, replace=False)
        data = data.drop(index=gone).reset_index(drop=True)
    return data


def _products_rows(seed: int) -> pd.DataFrame:
    """Complete, balanced: 3 products x 2 lots, 6 plates."""
    rng = np.random.default_rng(seed)
    lots = {"REF": "P1", "A": "P1", "B": "P2", "C": "P2", "D": "P3", "E": "P3"}
    prod_eff = {"P1": 0.0, "P2": 0.3, "P3": -0.2}
    lot_eff = {lot: prod_eff[p] + rng.normal(0, 0.15) for lot, p in lots.items()}
    rows = [
        (f"P{p}", lot, lots[lot], lot_eff[lot] + plate + rng.normal(0, 0.1))
        for p, plate in enumerate(rng.normal(0, 0.3, 6))
        for lot in lots
    ]
    return pd.DataFrame(rows, columns=["plate", "lot", "product", "log_ic50"])


def _free_pair() -> tuple[pd.DataFrame, fit.FitResult]:
    from test_potency import simulate_plate

    points = simulate_plate(np.random.default_rng(5), {"REF": 1.0, "T": 0.45})
    pair = points.assign(lot=points["lot"].fillna("REF"))
    res = fit.fit_joint(pair["conc"], pair["lysis"], pair["lot"], "LL.4", potency.SHARED_TOP, ("REF", "T"))
    return pair, res


R_CODE = r"""
suppressMessages({library(emmeans); library(lme4); library(pbkrtest); library(jsonlite)})
args <- commandArgs(TRUE)
out <- list()
for (name in c("complete", "incomplete")) {
  d <- read.csv(file.path(args[1], paste0(name, ".csv")), colClasses = c("character", "character", "numeric"))
  d$lot <- factor(d$lot, levels = c("REF", "A", "B", "C", "D")); d$plate <- factor(d$plate)
  m1 <- lm(log_ic50 ~ lot + plate, d); m2 <- lm(log_ic50 ~ plate + lot, d)
  a1 <- anova(m1); a2 <- anova(m2)
  pr <- summary(emmeans(m1, pairwise ~ lot, adjust = "tukey")$contrasts)
  ci <- confint(emmeans(m1, pairwise ~ lot, adjust = "tukey")$contrasts)
  out[[name]] <- list(f_lot_first = a1["lot", "F value"], p_lot_first = a1["lot", "Pr(>F)"],
                      f = a2["lot", "F value"], p = a2["lot", "Pr(>F)"], df1 = a2["lot", "Df"],
                      df2 = a2["Residuals", "Df"], contrast = as.character(pr$contrast), estimate = pr$estimate,
                      se = pr$SE, p_adj = pr$p.value, lo = ci$lower.CL, hi = ci$upper.CL)
}
d <- read.csv(file.path(args[1], "products.csv"), colClasses = c("character", "character", "character", "numeric"))
full <- lmer(log_ic50 ~ product + (1 | lot) + (1 | plate), d, REML = TRUE)
null <- lmer(log_ic50 ~ 1 + (1 | lot) + (1 | plate), d, REML = TRUE)
kr <- KRmodcomp(full, null)
vc <- as.data.frame(VarCorr(full))
out$products <- list(f = kr$test["Ftest", "stat"], df1 = kr$test["Ftest", "ndf"], df2 = kr$test["Ftest", "ddf"],
                     p = kr$test["Ftest", "p.value"], var_lot = vc$vcov[vc$grp == "lot"],
                     var_resid = vc$vcov[vc$grp == "Residual"])
p <- read.csv(file.path(args[1], "pair.csv"))
start <- fromJSON(file.path(args[1], "start.json"))
t <- as.numeric(p$lot == "T")
f <- function(conc, t, bR, bT, cR, cT, d, leR, leT) {
  b <- bR + t * (bT - bR); c <- cR + t * (cT - cR); le <- leR + t * (leT - leR)
  u <- ifelse(conc > 0, b * (log(pmax(conc, 1e-300)) - le), -Inf)
  c + (d - c) / (1 + exp(u))
}
n <- nls(lysis ~ f(conc, t, bR, bT, cR, cT, d, leR, leT), data = cbind(p, t = t), start = start,
         control = nls.control(tol = 1e-8, maxiter = 500, minFactor = 1e-12, warnOnly = TRUE))
out$nls <- list(rss = deviance(n), df = df.residual(n))
cat(toJSON(out, digits = NA, auto_unbox = TRUE))
"""


@pytest.fixture(scope="module")
def r(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("r")
    _campaign_rows(1).to_csv(folder / "complete.csv", index=False)
    _campaign_rows(2, drop=7).to_csv(folder / "incomplete.csv", index=False)
    _products_rows(3)[["plate", "lot", "product", "log_ic50"]].to_csv(folder / "products.csv", index=False)
    pair, res = _free_pair()
    pair[["conc", "lysis", "lot"]].to_csv(folder / "pair.csv", index=False)
    v = dict(zip(res.names, res.estimates))
    start = {"bR": v["b:REF"], "bT": v["b:T"], "cR": v["c:REF"], "cT": v["c:T"], "d": v["d"],
             "leR": np.log(v["e:REF"]), "leT": np.log(v["e:T"])}  # fmt: skip
    (folder / "start.json").write_text(json.dumps({k: float(x) * 1.02 for k, x in start.items()}))
    (folder / "check.R").write_text(R_CODE)
    done = subprocess.run([RSCRIPT, str(folder / "check.R"), str(folder)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("name", ["complete", "incomplete"])
def test_lots_differ_and_tukey_pairs_equal_r(r: dict, name: str) -> None:
    data = _campaign_rows(1) if name == "complete" else _campaign_rows(2, drop=7)
    got = r[name]
    bf = campaign.fit_blocks(data, LOTS)
    f, df1, df2, p = campaign.lots_differ(bf)
    assert (df1, df2) == (got["df1"], got["df2"])
    assert f == pytest.approx(got["f"], rel=1e-6) and p == pytest.approx(got["p"], rel=1e-6)
    if name == "complete":  # the anova(lm(y ~ lot + plate)): the same test when blocks are complete
        assert f == pytest.approx(got["f_lot_first"], rel=1e-6)
    else:  # incomplete: lot first is not adjusted for plates, and is not the intra-block test
        assert abs(f / got["f_lot_first"] - 1) > 1e-3
    pairs = campaign.tukey_pairs(bf)
    assert [f"{a} - {b}" for a, b in zip(pairs["lot_a"], pairs["lot_b"])] == got["contrast"]
    for col, key in (("estimate", "estimate"), ("se", "se"), ("p_adj", "p_adj"), ("lo", "lo"), ("hi", "hi")):
        assert pairs[col].to_numpy() == pytest.approx(np.array(got[key]), rel=1e-6), col


def test_products_differ_equals_lmer_kenward_roger(r: dict) -> None:
    data = _products_rows(3)
    products = dict(zip(data["lot"], data["product"]))
    bf = campaign.fit_blocks(data, ["REF", "A", "B", "C", "D", "E"])
    f, df1, df2, p, var_lot, var_res = campaign.products_differ(bf, products)
    got = r["products"]
    # our numbers are closed-form ANOVA; lmer's are its REML optimum, reached to ~1e-6 (its optimiser's
    # tolerance): hence 1e-4 here, 1e-6 for the closed-form lm/emmeans comparisons
    assert (df1, df2) == pytest.approx((got["df1"], got["df2"]), rel=1e-4)
    assert f == pytest.approx(got["f"], rel=1e-4) and p == pytest.approx(got["p"], rel=1e-4)
    assert var_res == pytest.approx(got["var_resid"], rel=1e-4)
    assert var_lot == pytest.approx(got["var_lot"], rel=1e-4)


def test_shared_top_free_model_rss_equals_r_nls(r: dict) -> None:
    _, res = _free_pair()
    assert res.df == r["nls"]["df"]
    assert res.rss == pytest.approx(r["nls"]["rss"], rel=1e-7)
