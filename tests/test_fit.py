"""cr51.fit against drc 3.2-0 results (tests/data, shared/reference/drc/EXPECTED.md)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cr51 import fit

DATA = Path(__file__).parent / "data"
SIG4 = 5e-4  # 4 significant digits
# drc's optimiser (optim, reltol 1e-7) leaves the free and common-c,d S.alba fits
# off the exact optimum: fixing the ED50 ratio at drc's printed value raises the
# RSS by only 2.4e-6 (relative 3e-7). Our fit reaches gradient ~1e-8, so those
# ratios agree with drc to ~1e-3 relative, not to 4 digits.
DRC_LOOSE = 1.5e-3


def close(actual: float, expected: float, rel: float = SIG4) -> bool:
    return bool(abs(actual - expected) <= rel * abs(expected))


@pytest.fixture(scope="module")
def ryegrass() -> fit.FitResult:
    d = pd.read_csv(DATA / "ryegrass.csv")
    return fit.fit_curve(d["conc"], d["rootl"], "LL.4")


@pytest.fixture(scope="module")
def salba() -> pd.DataFrame:
    return pd.read_csv(DATA / "S.alba.csv")


def joint(salba: pd.DataFrame, per_group: frozenset[str]) -> fit.FitResult:
    return fit.fit_joint(salba["Dose"], salba["DryMatter"], salba["Herbicide"], "LL.4", per_group)


# ---------------------------------------------------------------- ryegrass


@pytest.mark.parametrize(
    ("name", "est", "se"),
    [("b", 2.98222, 0.46506), ("c", 0.48141, 0.21219), ("d", 7.79296, 0.18857), ("e", 3.05795, 0.18573)],
)
def test_ryegrass_parameters(ryegrass: fit.FitResult, name: str, est: float, se: float) -> None:
    i = ryegrass.names.index(name)
    assert close(ryegrass.estimates[i], est)
    assert close(ryegrass.se[i], se)


def test_ryegrass_summary(ryegrass: fit.FitResult) -> None:
    assert ryegrass.converged and ryegrass.message == "ok"
    assert ryegrass.n == 24 and ryegrass.df == 20
    assert close(ryegrass.sigma, 0.5196256)
    assert close(ryegrass.rss, 5.4002)
    assert close(ryegrass.aic, 42.31029)
    assert close(ryegrass.aicc, 42.31029 + 2 * 5 * 6 / (24 - 5 - 1))


@pytest.mark.parametrize(
    ("p", "est", "se", "lo", "hi"),
    [
        (10, 1.46371, 0.18677, 1.07411, 1.85330),
        (20, 1.92109, 0.17774, 1.55032, 2.29186),
        (50, 3.05795, 0.18573, 2.67053, 3.44538),
    ],
)
def test_ryegrass_ed(ryegrass: fit.FitResult, p: float, est: float, se: float, lo: float, hi: float) -> None:
    ed = ryegrass.ed(p)
    for actual, expected in zip((ed.estimate, ed.se, ed.lo, ed.hi), (est, se, lo, hi), strict=True):
        assert close(actual, expected)


def test_drc_vcov_is_not_gauss_newton(ryegrass: fit.FitResult) -> None:
    """SE of b under sigma^2 (J'J)^-1 differs from drc's by > 0.5 %."""
    d = pd.read_csv(DATA / "ryegrass.csv")
    design = fit._build_design(d["conc"].to_numpy(float), np.full(24, "all"), fit.MODELS["LL.4"], (), ("all",))
    _, jac = design.evaluate(design.to_internal(ryegrass.estimates))
    jac[:, design.e_index] /= ryegrass.estimates[design.e_index]
    gn_se = np.sqrt(np.diag(ryegrass.sigma**2 * np.linalg.inv(jac.T @ jac)))
    assert abs(gn_se[0] / ryegrass.se[0] - 1) > 5e-3


def test_lack_of_fit_ll5(ryegrass: fit.FitResult) -> None:
    d = pd.read_csv(DATA / "ryegrass.csv")
    ll5 = fit.fit_curve(d["conc"], d["rootl"], "LL.5")
    assert ll5.converged
    test = fit.compare_fits(ryegrass, ll5)
    assert (test.df1, test.df2) == (1, 19)
    assert close(test.f, 0.4435) and abs(test.p - 0.5135) <= 5e-5


# ---------------------------------------------------------------- S.alba


@pytest.mark.parametrize(
    ("per_group", "rss", "df"),
    [(fit.FREE, 8.3479, 60), (fit.COMMON_CD, 8.5114, 62), (fit.PARALLEL, 9.4946, 63)],
)
def test_salba_rss(salba: pd.DataFrame, per_group: frozenset[str], rss: float, df: int) -> None:
    result = joint(salba, per_group)
    assert result.converged
    assert close(result.rss, rss) and result.df == df


@pytest.mark.parametrize(
    ("reduced", "full", "f", "df1", "df2", "p"),
    [
        (fit.COMMON_CD, fit.FREE, 0.5876, 2, 60, 0.5588),
        (fit.PARALLEL, fit.COMMON_CD, 7.1614, 1, 62, 0.0095),
        (fit.PARALLEL, fit.FREE, 2.7471, 3, 60, 0.0507),
    ],
)
def test_salba_f_tests(salba: pd.DataFrame, reduced, full, f: float, df1: int, df2: int, p: float) -> None:
    test = fit.compare_fits(joint(salba, reduced), joint(salba, full))
    assert (test.df1, test.df2) == (df1, df2)
    assert close(test.f, f) and abs(test.p - p) <= max(5e-5, SIG4 * p)  # p printed to 4 decimals


def test_salba_parallel_estimates(salba: pd.DataFrame) -> None:
    result = joint(salba, fit.PARALLEL)
    expected = {
        "b": (3.864179, 0.767622),
        "c": (0.753660, 0.087188),
        "d": (3.824864, 0.079248),
        "e:Bentazone": (28.483137, 1.921249),
        "e:Glyphosate": (66.956374, 5.487876),
    }
    assert set(result.names) == set(expected)
    for name, (est, se) in expected.items():
        i = result.names.index(name)
        assert close(result.estimates[i], est) and close(result.se[i], se)
    assert close(result.sigma, 0.3882107)


@pytest.mark.parametrize(
    ("per_group", "ratio", "se", "dlo", "dhi", "flo", "fhi", "rel"),
    [
        (fit.FREE, 0.47141, 0.061791, 0.34781, 0.59501, 0.36534, 0.62228, DRC_LOOSE),
        (fit.COMMON_CD, 0.42805, 0.043915, 0.34026, 0.51583, 0.34990, 0.52990, DRC_LOOSE),
        (fit.PARALLEL, 0.42540, 0.041375, 0.34272, 0.50808, 0.35112, 0.51997, SIG4),
    ],
)
def test_salba_ed50_ratio(salba, per_group, ratio, se, dlo, dhi, flo, fhi, rel) -> None:
    r = fit.ed_ratio(joint(salba, per_group), 50, "Bentazone", "Glyphosate")
    assert r.bounded
    for actual, expected in zip((r.ratio, r.se, r.delta_lo, r.delta_hi, r.lo, r.hi), (ratio, se, dlo, dhi, flo, fhi)):
        assert close(actual, expected, rel)


def test_salba_parallel_reciprocal(salba: pd.DataFrame) -> None:
    result = joint(salba, fit.PARALLEL)
    r = fit.ed_ratio(result, 50, "Glyphosate", "Bentazone")
    assert close(r.ratio, 2.3507) and close(r.lo, 1.9232) and close(r.hi, 2.8480)
    forward = fit.ed_ratio(result, 50, "Bentazone", "Glyphosate")
    assert r.lo == pytest.approx(1 / forward.hi, rel=1e-12) and r.hi == pytest.approx(1 / forward.lo, rel=1e-12)


# ---------------------------------------------------------------- building blocks


def test_curve_at_zero_dose_is_top_without_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = fit.curve([0.0, 1.0, 1e9], b=2.0, c=1.0, d=9.0, e=1.0)
        y_inc = fit.curve([0.0], b=-2.0, c=1.0, d=9.0, e=1.0)
    assert y == pytest.approx([9.0, 5.0, 1.0])
    assert y_inc == pytest.approx([1.0])


def test_analytic_jacobian_matches_finite_differences() -> None:
    x = np.array([0.0, 0.1, 0.5, 1.0, 3.0, 10.0])
    design = fit._build_design(x, np.full(6, "all"), fit.MODELS["LL.5"], (), ("all",))
    theta = np.array([1.7, 0.4, 8.0, np.log(1.3), 0.7])
    _, jac = design.evaluate(theta)
    for j in range(5):
        h = np.zeros(5)
        h[j] = 1e-6
        numeric = (design.evaluate(theta + h)[0] - design.evaluate(theta - h)[0]) / 2e-6
        assert jac[:, j] == pytest.approx(numeric, rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("model", ["LL.3", "LL.4", "LL.5"])
@pytest.mark.parametrize("per_group", [fit.COMMON_E, fit.PARALLEL, fit.COMMON_CD, fit.FREE])
@pytest.mark.parametrize("b_sign", [1.0, -1.0])
def test_analytic_rss_hessian_matches_finite_differences(model: str, per_group: frozenset, b_sign: float) -> None:
    """The fits' analytic RSS Hessian (hence every SE and CI) equals central differences of the
    analytic gradient, with dose 0 in the data and either sign of the slope."""
    rng = np.random.default_rng(3)
    x = np.tile([0.0, 0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0], 2)
    groups = ("A", "B")
    own = frozenset(per_group) & set(fit.MODELS[model].params)
    design = fit._build_design(x, np.repeat(groups, 9), fit.MODELS[model], own, groups)
    theta = np.abs(rng.normal(1.0, 0.3, design.n_params)) + 0.3
    theta[[i for i, name in enumerate(design.names) if name[0] == "b"]] *= b_sign
    y = rng.normal(30.0, 10.0, x.size)
    numeric = fit.rss_hessian_numeric(design, theta, y)
    assert design.rss_hessian(theta, y) == pytest.approx(numeric, rel=1e-7, abs=1e-7 * np.abs(numeric).max())


def test_ll5_ed_closed_form() -> None:
    x = np.repeat([0.0, 0.3, 1, 3, 10, 30, 100], 3)
    rng = np.random.default_rng(5)
    y = fit.curve(x, 1.2, 2.0, 10.0, 5.0, 0.5) + rng.normal(0, 0.05, x.size)
    result = fit.fit_curve(x, y, "LL.5")
    assert result.converged
    for p in (20, 50, 80):
        ed = result.ed(p).estimate
        b, c, d, e, f = result.estimates
        assert fit.curve([ed], b, c, d, e, f)[0] == pytest.approx(d - p / 100 * (d - c), rel=1e-10)


def test_ll3_fixes_bottom() -> None:
    d = pd.read_csv(DATA / "ryegrass.csv")
    result = fit.fit_curve(d["conc"], d["rootl"], "LL.3")
    assert result.names == ("b", "d", "e") and result.df == 21 and result.value("c") == 0.0


@pytest.mark.parametrize(
    ("x", "y", "reason"),
    [
        ([0, 1, 2], [1.0, 2.0, 3.0], "too few points"),
        ([0, 1, 2, 3, 4, 5], [2.0] * 6, "all responses are equal"),
        ([0, 1, 2, 3, 4, np.nan], [5, 4, 3, 2, 1, 0], "NaN"),
        ([0, 0, 0, 1, 1, 1], [5, 4, 3, 2, 1, 0], "distinct positive doses"),
    ],
)
def test_bad_data_does_not_raise(x, y, reason: str) -> None:
    result = fit.fit_curve(x, y)
    assert not result.converged and reason in result.message
    assert np.all(np.isnan(result.estimates))


def test_fieller_unbounded() -> None:
    r = fit.fieller_ratio(1.0, 0.1, 0.01, 0.01, 0.0, df=10)
    assert not r.bounded and np.isnan(r.lo) and np.isnan(r.hi) and "unbounded" in r.reason
    assert r.ratio == pytest.approx(10.0)


def test_fieller_collapses_to_ratio_without_variance() -> None:
    r = fit.fieller_ratio(3.0, 2.0, 0.0, 0.0, 0.0, df=10)
    assert r.bounded and r.lo == pytest.approx(1.5) and r.hi == pytest.approx(1.5)


def test_f_test_by_hand() -> None:
    test = fit.f_test(12.0, 12, 10.0, 10)
    assert test.f == pytest.approx(1.0) and (test.df1, test.df2) == (2, 10)
    assert test.p == pytest.approx(1.2**-5, rel=1e-12)  # F(2, n) tail: (1 + 2F/n)^(-n/2)


def test_free_model_split_equals_joint_optimisation() -> None:
    """The FREE model is fitted group by group (its RSS separates); the result must equal the
    unsplit joint optimisation of the same design: estimates, RSS and drc covariance."""
    data = np.genfromtxt(DATA / "S.alba.csv", delimiter=",", names=True, dtype=None, encoding="utf-8")
    x, y, g = data["Dose"].astype(float), data["DryMatter"].astype(float), data["Herbicide"].astype(str)
    split = fit.fit_joint(x, y, g, "LL.4", fit.FREE)
    design = fit._build_design(x, g, fit.MODELS["LL.4"], fit.FREE & set(fit.MODELS["LL.4"].params), split.groups)
    joint = fit._optimise(design, x, y, g, split.per_group)
    assert split.names == joint.names
    # the free S.alba model has a flat direction (see the EDcomp note above): two optimisers stop
    # ~1e-5 apart in the parameters while agreeing on the RSS to 1e-9
    np.testing.assert_allclose(split.estimates, joint.estimates, rtol=1e-4)
    assert split.rss == pytest.approx(joint.rss, rel=1e-9)
    np.testing.assert_allclose(split.vcov, joint.vcov, rtol=2e-2, atol=1e-9)


def _lmfit_leastsq(residual, jacobian, params, max_nfev=None) -> tuple[np.ndarray, bool, str]:
    """The same problem solved by ``lmfit.Minimizer`` itself: (values, success, message)."""
    import lmfit

    def values(pars: lmfit.Parameters) -> np.ndarray:
        return np.array([par.value for par in pars.values()])

    mini = lmfit.Minimizer(lambda pars: residual(values(pars)), params, calc_covar=False)
    out = mini.minimize(method="leastsq", Dfun=lambda pars: jacobian(values(pars)), max_nfev=max_nfev)
    return values(out.params), out.success, out.message


def _curves(rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Simulated suppression curves (two groups each): shallow, steep (slope at its bound), rising,
    flat (IC50 at its bound), noisy; untreated wells at dose 0."""
    doses = np.repeat([0.0, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0], 2)
    out = []
    for b, c, d, e, noise in [
        (1.0, 10.0, 60.0, 0.5, 2.0),
        (0.6, 5.0, 55.0, 2.0, 3.0),
        (80.0, 10.0, 60.0, 0.5, 0.5),
        (200.0, 10.0, 60.0, 0.55, 0.0),
        (1.0, 10.0, 60.0, 1e6, 1.0),
        (-1.5, 10.0, 60.0, 1.0, 2.0),
        (1.0, 40.0, 40.0, 1.0, 2.0),
        (2.0, 20.0, 45.0, 0.2, 8.0),
    ]:
        y = np.concatenate([fit.curve(doses, b, c, d, e), fit.curve(doses, b, c, d, 2.5 * e)])
        y += rng.normal(0.0, noise, y.size)
        out.append((np.concatenate([doses, doses]), y, np.repeat(["ref", "lot"], doses.size)))
    return out


def test_levenberg_marquardt_is_lmfits_leastsq_to_the_last_bit(monkeypatch, ryegrass, salba) -> None:
    """Every fit's optimiser (:func:`cr51.fit.levenberg_marquardt`, lmfit's transform applied to the
    whole vector) against ``lmfit.Minimizer`` on a copy of the same problem: the same values bit for
    bit, the same success and message, over single curves, joint models, slopes and IC50s at their
    bounds, and an evaluation limit that stops the loop."""
    import copy

    real = fit.levenberg_marquardt
    pairs = []

    def both(residual, jacobian, params, max_nfev=None):
        theirs = _lmfit_leastsq(residual, jacobian, copy.deepcopy(list(params)), max_nfev)
        ours = real(residual, jacobian, params, max_nfev)
        pairs.append((ours, theirs, max_nfev))
        return ours

    monkeypatch.setattr(fit, "levenberg_marquardt", both)
    d = pd.read_csv(DATA / "ryegrass.csv")
    for model in ("LL.3", "LL.4", "LL.5"):
        fit.fit_curve(d["conc"], d["rootl"], model)
    for per_group in (fit.PARALLEL, fit.COMMON_CD, fit.COMMON_E, frozenset({"b", "c", "e"})):
        joint(salba, per_group)
    results = []
    for x, y, g in _curves(np.random.default_rng(20261203)):
        results.append(fit.fit_curve(x[g == "ref"], y[g == "ref"]))
        results.append(fit.fit_joint(x, y, g, "LL.4", fit.PARALLEL))
        results.append(fit.fit_joint(x, y, g, "LL.4", frozenset({"b", "c", "e"})))
    assert any(r.converged for r in results) and any("at its bound" in r.message for r in results)
    stopped = len(pairs)
    monkeypatch.setattr(fit, "levenberg_marquardt", lambda r, j, p: both(r, j, p, max_nfev=4))
    limited = fit.fit_curve(d["conc"], d["rootl"])
    assert not limited.converged and "more than 4 function evaluations" in limited.message
    assert len(pairs) == stopped + 1 and stopped >= 30
    for ours, (values, success, message), max_nfev in pairs:
        assert ours.success == success
        if max_nfev is None:
            assert ours.message == message
            np.testing.assert_array_equal(ours.values, values)  # bit for bit, NaN where lmfit has NaN


def test_levenberg_marquardt_refuses_what_lmfit_refuses() -> None:
    """A NaN residual raises ValueError, as lmfit's default ``nan_policy="raise"``; a one-sided bound
    (lmfit's sqrt transform, which the fits never use) is refused rather than transformed wrongly."""
    import lmfit

    def params(lo: float = 0.0) -> list:
        return [lmfit.Parameter("p0", value=1.0, min=lo, max=2.0), lmfit.Parameter("p1", value=0.0)]

    def nan_residual(values: np.ndarray) -> np.ndarray:
        return np.array([np.nan, values[0], values[1]])

    def jacobian(values: np.ndarray) -> np.ndarray:
        return np.ones((3, 2))

    with pytest.raises(ValueError, match="NaN"):
        _lmfit_leastsq(nan_residual, jacobian, params())
    with pytest.raises(ValueError, match="NaN or infinite"):
        fit.levenberg_marquardt(nan_residual, jacobian, params())
    with pytest.raises(ValueError, match="one-sided"):
        fit.levenberg_marquardt(lambda v: np.array([v[0] - 1, v[1], 0.0]), jacobian, params(-np.inf))


def test_a_fit_memo_is_explicit_and_serves_identical_curves_once() -> None:
    d = pd.read_csv(DATA / "ryegrass.csv")
    x, y = d["conc"].to_numpy(), d["rootl"].to_numpy()
    memo = fit.FitMemo()
    first = fit.fit_curve(x, y, "LL.4", memo)
    assert len(memo) == 1 and fit.fit_curve(x, y, "LL.4", memo) is first  # served from the memo
    assert fit.fit_curve(x, y, "LL.4") is not first  # without a memo nothing is kept
    assert fit.fit_curve(x, y * 1.01, "LL.4", memo) is not first and len(memo) == 2
    # the free model fits each group alone through the memo: the same curve in another pair is reused
    g = np.where(np.arange(x.size) % 2 == 0, "a", "b")
    free = fit.fit_joint(x, y, g, "LL.4", fit.FREE, memo=memo)
    assert free.converged and len(memo) == 4
    fit.fit_joint(x, y, g, "LL.4", fit.FREE, memo=memo)
    assert len(memo) == 4
