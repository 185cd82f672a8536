"""Log-logistic dose-response fits with drc-compatible statistics.

Models use drc's parameterisation (Ritz et al. 2015, R package ``drc``)::

    LL.5: f(x) = c + (d - c) / (1 + exp(b (ln x - ln e)))**f
    LL.4: LL.5 with f = 1
    LL.3: LL.4 with c = 0

``x = 0`` is allowed: ``f(0) = d`` for ``b > 0`` (``c`` for ``b < 0``).

Fits are unweighted least squares by MINPACK's Levenberg-Marquardt as :mod:`lmfit` runs it (lmfit
``Parameter`` bounds and their Minuit-style transform, applied to the whole parameter vector at once:
:func:`levenberg_marquardt`; analytic Jacobian, ``ln e`` optimised internally; a guard column keeps
SciPy's MINPACK from reading past the Jacobian, so that a fit does not depend on the process's history:
:data:`QR_GUARD`).
Standard errors follow drc: ``vcov = 2 * sigma^2 * H^-1`` with ``H`` the Hessian of the residual sum of
squares with respect to the reported parameters (b, c, d, e[, f]) and
``sigma^2 = RSS / (n - p)``. ``H`` is analytic (second derivatives of the curve);
:func:`rss_hessian_numeric` (central differences of the analytic gradient) checks it in the tests.

Joint fits over groups (drc's ``pmodels``) let every curve parameter be either
shared by all groups or estimated per group; see :func:`fit_joint`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from scipy import special

if TYPE_CHECKING:  # lmfit is imported where a fit runs: the curve maths alone stays light
    import lmfit

FloatArray = npt.NDArray[np.float64]

CURVE_PARAMS: tuple[str, ...] = ("b", "c", "d", "e", "f")

#: ``per_group`` presets for :func:`fit_joint` (parameters estimated per group).
PARALLEL: frozenset[str] = frozenset({"e"})
COMMON_CD: frozenset[str] = frozenset({"b", "e", "f"})
FREE: frozenset[str] = frozenset(CURVE_PARAMS)
COMMON_E: frozenset[str] = frozenset()

B_BOUND = 50.0  # |b| limit: steeper curves are not estimable from plate data
E_DECADES = 3.0  # e may lie at most this many decades outside the dose range
F_BOUNDS = (0.01, 100.0)  # LL.5 asymmetry limits


@dataclass(frozen=True)
class CurveModel:
    """A log-logistic model: its free parameters and the fixed ones."""

    name: str
    params: tuple[str, ...]
    fixed: dict[str, float]


MODELS: dict[str, CurveModel] = {
    "LL.3": CurveModel("LL.3", ("b", "d", "e"), {"c": 0.0, "f": 1.0}),
    "LL.4": CurveModel("LL.4", ("b", "c", "d", "e"), {"f": 1.0}),
    "LL.5": CurveModel("LL.5", ("b", "c", "d", "e", "f"), {}),
}


# --------------------------------------------------------------------------
# Curve and its derivatives
# --------------------------------------------------------------------------


def log_dose(x: FloatArray) -> FloatArray:
    """Return ``ln x`` with ``-inf`` for ``x == 0``, without a warning."""
    out = np.full(x.shape, -np.inf)
    np.log(x, out=out, where=x > 0)
    return out


def _curve_terms(
    lx: FloatArray,
    b: FloatArray,
    c: FloatArray,
    d: FloatArray,
    le: FloatArray,
    f: FloatArray,
    order: int = 1,
    zero: npt.NDArray[np.bool_] | bool | None = None,
    with_f: bool = True,
) -> tuple[FloatArray, dict[str, FloatArray], dict[tuple[str, str], FloatArray]]:
    """LL.5 values and, up to ``order``, first and second partial derivatives.

    Derivatives are w.r.t. b, c, d, ln e (key ``"e"``) and f. All arguments are per-observation
    arrays of equal length; ``lx`` is ``ln x`` (``-inf`` at dose 0). With ``u = b (ln x - ln e)``,
    ``s = ln(1 + exp(u))`` and ``g = exp(-f s)`` the curve is ``c + (d - c) g``; every derivative
    involving b, ln e or f is exactly 0 at dose 0. Second derivatives are keyed by the ordered
    pair of names (``("b", "e")`` etc.); pairs not listed (c-c, c-d, d-d) are 0. ``zero`` is
    ``isneginf(lx)`` when the caller has it, ``False`` when no dose is 0. ``with_f=False`` (f fixed, as
    in LL.3 and LL.4) leaves out the derivatives involving f.
    """
    if zero is None:
        zero = np.isneginf(lx)
    if zero is False:
        dlx = lx - le
        u = b * dlx
    else:
        dlx = np.where(zero, 0.0, lx - le)
        u = np.where(zero, np.where(b > 0, -np.inf, np.inf), b * dlx)
    s = np.logaddexp(0.0, u)  # ln(1 + exp(u)), overflow-free
    g = np.exp(-f * s)
    span = d - c
    value = c + span * g
    if order < 1:
        return value, {}, {}
    sig = special.expit(u)
    g_u = -f * g * sig
    partials = {"b": span * g_u * dlx, "c": 1.0 - g, "d": g, "e": -span * g_u * b}
    if with_f:
        finite = np.isfinite(s)  # s = inf only where g = 0 (dose 0 with b < 0)
        s_g = np.multiply(s, g, out=np.zeros_like(s), where=finite)
        partials["f"] = -span * s_g
    if order < 2:
        return value, partials, {}
    g_uu = f * g * sig * ((f + 1.0) * sig - 1.0)
    second = {
        ("b", "b"): span * g_uu * dlx**2,
        ("b", "e"): -span * (b * dlx * g_uu + g_u),
        ("e", "e"): span * g_uu * b**2,
        ("b", "c"): -g_u * dlx,
        ("b", "d"): g_u * dlx,
        ("c", "e"): g_u * b,
        ("d", "e"): -g_u * b,
    }
    if with_f:
        g_ff = np.multiply(s, s_g, out=np.zeros_like(s), where=finite)
        g_uf = sig * (f * s_g - g)
        second[("b", "f")] = span * g_uf * dlx
        second[("e", "f")] = -span * g_uf * b
        second[("f", "f")] = span * g_ff
        second[("c", "f")] = s_g
        second[("d", "f")] = -s_g
    return value, partials, second


def curve(x: npt.ArrayLike, b: float, c: float, d: float, e: float, f: float = 1.0) -> FloatArray:
    """Evaluate the LL.5 curve (LL.4 with ``f=1``, LL.3 with ``c=0, f=1``).

    Parameters
    ----------
    x : array_like
        Doses, ``>= 0``.
    b, c, d, e, f : float
        Slope, lower and upper asymptote, inflection dose (> 0), asymmetry.

    Returns
    -------
    numpy.ndarray
        Response at each dose; ``d`` at dose 0 when ``b > 0``.
    """
    lx = log_dose(np.asarray(x, dtype=float))
    ones = np.ones_like(lx)
    value, _, _ = _curve_terms(lx, b * ones, c * ones, d * ones, np.log(e) * ones, f * ones, order=0)
    return value


# --------------------------------------------------------------------------
# Design of a (joint) model
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Design:
    """Maps a parameter vector onto per-observation curve parameters."""

    model: CurveModel
    lx: FloatArray
    groups: tuple[str, ...]
    names: tuple[str, ...]
    columns: dict[str, npt.NDArray[np.intp]]  # curve param -> theta index per obs
    e_index: npt.NDArray[np.intp]  # positions of e entries in theta

    @property
    def n_params(self) -> int:
        return len(self.names)

    @cached_property
    def _fixed(self) -> dict[str, FloatArray]:
        """Per-observation arrays of the model's fixed parameters (read-only: shared by every call)."""
        out = {}
        for k, v in self.model.fixed.items():
            arr = np.full(self.lx.size, v)
            arr.flags.writeable = False
            out[k] = arr
        return out

    @cached_property
    def _index(self) -> tuple[tuple[str, ...], npt.NDArray[np.intp]]:
        """The free curve parameters and their (k, n) theta indices, for one gather per call."""
        return tuple(self.columns), np.stack(list(self.columns.values()))

    def _expand(self, theta_int: FloatArray) -> dict[str, FloatArray]:
        vals = dict(self._fixed)
        names, index = self._index
        vals.update(zip(names, theta_int[index]))
        return vals

    @cached_property
    def _zero(self) -> npt.NDArray[np.bool_] | bool:
        """Observations at dose 0 (``False`` if there are none)."""
        zero = np.isneginf(self.lx)
        return zero if zero.any() else False

    def _terms(self, theta_int: FloatArray, order: int) -> tuple[FloatArray, dict, dict]:
        v = self._expand(theta_int)
        return _curve_terms(self.lx, v["b"], v["c"], v["d"], v["e"], v["f"], order, self._zero, "f" in self.columns)

    @cached_property
    def _onehot(self) -> dict[str, FloatArray]:
        """Per free curve parameter, the (n, p) 0/1 matrix placing each observation's entry in theta."""
        out = {}
        for k, cols in self.columns.items():
            m = np.zeros((self.lx.size, self.n_params))
            m[np.arange(self.lx.size), cols] = 1.0
            out[k] = m
        return out

    def values(self, theta_int: FloatArray) -> FloatArray:
        """Model values at the internal vector (ln e)."""
        return self._terms(theta_int, 0)[0]

    def evaluate(self, theta_int: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Model values and Jacobian w.r.t. the internal vector (ln e)."""
        value, partials, _ = self._terms(theta_int, 1)
        return value, self._jacobian(partials)

    def _jacobian(self, partials: Mapping[str, FloatArray]) -> FloatArray:
        """The (n, p) Jacobian: each observation's curve partials placed at its parameters' columns."""
        jac = np.zeros((self.lx.size, self.n_params))
        rows = np.arange(self.lx.size)
        for k, cols in self.columns.items():
            jac[rows, cols] = partials[k]
        return jac

    def rss_hessian(self, theta: FloatArray, y: FloatArray) -> FloatArray:
        """Analytic Hessian of the RSS w.r.t. the reported parameters (e, not ln e).

        ``H = 2 sum_i (J_i J_i' - r_i F''_i)`` on the internal scale (``r = y - F``), then the change
        of variable ``e = exp(ln e)``: ``H_ee = (H_LL - dRSS/dL) / e^2`` on the diagonal and a factor
        ``1/e`` per e index elsewhere.
        """
        value, partials, second = self._terms(self.to_internal(theta), 2)
        resid = y - value
        onehot = self._onehot
        jac = self._jacobian(partials)
        hess = jac.T @ jac
        for (k1, k2), deriv in second.items():
            if k1 in self.columns and k2 in self.columns:
                block = onehot[k1].T @ (onehot[k2] * (resid * deriv)[:, None])
                hess -= block if k1 == k2 else block + block.T
        hess *= 2.0
        scale = np.ones(self.n_params)
        scale[self.e_index] = 1.0 / theta[self.e_index]
        grad = -2.0 * jac.T @ resid
        hess *= np.outer(scale, scale)
        hess[self.e_index, self.e_index] -= grad[self.e_index] * scale[self.e_index] ** 2
        return 0.5 * (hess + hess.T)

    def to_internal(self, theta: FloatArray) -> FloatArray:
        out = theta.copy()
        out[self.e_index] = np.log(theta[self.e_index])
        return out

    def to_reported(self, theta_int: FloatArray) -> FloatArray:
        out = theta_int.copy()
        out[self.e_index] = np.exp(theta_int[self.e_index])
        return out

    def rss_gradient(self, theta: FloatArray, y: FloatArray) -> FloatArray:
        """Gradient of the RSS w.r.t. the reported parameters (e, not ln e)."""
        value, jac = self.evaluate(self.to_internal(theta))
        jac[:, self.e_index] /= theta[self.e_index]
        return -2.0 * jac.T @ (y - value)


def _build_design(
    x: FloatArray, group: npt.NDArray[np.str_], model: CurveModel, per_group: Collection[str], groups: tuple[str, ...]
) -> _Design:
    lookup = {g: i for i, g in enumerate(groups)}
    code = np.fromiter((lookup[g] for g in group.tolist()), dtype=np.intp, count=x.size)
    names: list[str] = []
    columns: dict[str, npt.NDArray[np.intp]] = {}
    for k in model.params:
        if k in per_group:
            columns[k] = len(names) + code
            names.extend(f"{k}:{g}" for g in groups)
        else:
            columns[k] = np.full(x.size, len(names), dtype=np.intp)
            names.append(k)
    e_index = np.array([i for i, nm in enumerate(names) if nm.split(":")[0] == "e"], dtype=np.intp)
    return _Design(model, log_dose(x), groups, tuple(names), columns, e_index)


# --------------------------------------------------------------------------
# Starting values
# --------------------------------------------------------------------------


def _group_start(x: FloatArray, y: FloatArray, model: CurveModel) -> dict[str, float]:
    """Self-starting values for one curve (internal scale: ``e`` is ln e).

    ``d`` = mean response at the lowest dose, ``c`` = at the highest dose,
    ``ln e`` = log dose where the dose-mean response crosses (c + d)/2
    (linear interpolation on log dose; median log dose if it never crosses),
    ``b`` = slope of the linearised logit ln((d - y)/(y - c)) on ln x
    (1 if that regression is not possible), limited to 0.2 <= |b| <= 20.
    """
    doses = np.unique(x)
    means = np.array([y[x == dose].mean() for dose in doses])
    d0 = float(means[0])
    c0 = model.fixed.get("c", float(means[-1]))
    pos = doses > 0
    lpos, mpos = np.log(doses[pos]), means[pos]
    half = 0.5 * (c0 + d0)
    diff = mpos - half
    cross = np.nonzero(diff[:-1] * diff[1:] <= 0)[0]
    if cross.size and diff[cross[0]] != diff[cross[0] + 1]:
        i = cross[0]
        le0 = float(lpos[i] + (lpos[i + 1] - lpos[i]) * diff[i] / (diff[i] - diff[i + 1]))
    else:
        le0 = float(np.median(lpos)) if lpos.size else 0.0
    return {"b": _logit_slope(x, y, c0, d0), "c": c0, "d": d0, "e": le0, "f": 1.0}


def _logit_slope(x: FloatArray, y: FloatArray, c0: float, d0: float) -> float:
    """Slope of ln((d - y)/(y - c)) on ln x with asymptotes widened by 5 %."""
    widen = 0.05 * (d0 - c0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (d0 + widen - y) / (y - c0 + widen)
    keep = (x > 0) & (ratio > 0) & np.isfinite(ratio)
    b0 = np.nan
    if np.unique(x[keep]).size >= 2:
        b0 = float(np.polyfit(np.log(x[keep]), np.log(ratio[keep]), 1)[0])
    if not np.isfinite(b0) or abs(b0) < 1e-8:
        b0 = 1.0 if d0 >= c0 else -1.0
    return float(np.sign(b0) * np.clip(abs(b0), 0.2, 20.0))


def _joint_start(x: FloatArray, y: FloatArray, group: npt.NDArray[np.str_], design: _Design) -> FloatArray:
    """Per-group starts for per-group parameters, medians of them for shared."""
    starts = {g: _group_start(x[group == g], y[group == g], design.model) for g in design.groups}
    theta = np.empty(design.n_params)
    for i, name in enumerate(design.names):
        k, _, g = name.partition(":")
        theta[i] = starts[g][k] if g else np.median([s[k] for s in starts.values()])
    return theta


def _start(
    design: _Design, x: FloatArray, y: FloatArray, grp: npt.NDArray[np.str_], given: Mapping[str, float]
) -> FloatArray:
    """Internal starting vector: the ``given`` values where usable, self-starting values elsewhere."""
    usable = {
        name: float(v)
        for name, v in given.items()
        if name in design.names and np.isfinite(v) and (name[0] != "e" or v > 0)
    }
    if len(usable) == design.n_params:
        theta = np.array([usable[name] for name in design.names])
        return design.to_internal(theta)
    start = _joint_start(x, y, grp, design)
    for i, name in enumerate(design.names):
        if name in usable:
            start[i] = np.log(usable[name]) if name[0] == "e" else usable[name]
    return start


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A derived quantity with delta-method SE and t-based CI."""

    estimate: float
    se: float
    lo: float
    hi: float


@dataclass(frozen=True)
class FitResult:
    """Outcome of :func:`fit_curve` / :func:`fit_joint`.

    Attributes
    ----------
    model : str
        ``"LL.3"``, ``"LL.4"`` or ``"LL.5"``.
    names : tuple of str
        Parameter names; per-group ones are ``"<param>:<group>"``.
    estimates : numpy.ndarray
        Estimates in the order of ``names`` (``e`` on its natural scale).
    vcov : numpy.ndarray
        drc covariance ``2 sigma^2 H^-1``.
    rss : float
        Residual sum of squares.
    df : int
        Residual degrees of freedom ``n - p``.
    n : int
        Number of observations.
    converged : bool
        False if the data were unusable or the optimum is not acceptable.
    message : str
        Reason when not converged, else ``"ok"``.
    groups : tuple of str
        Group labels in parameter order.
    per_group : frozenset of str
        Curve parameters estimated per group.
    at_bound : tuple of str
        When the optimum lies at a parameter's bound (not converged): the names of the parameters there
        (``"e:<group>"`` etc.), else empty.
    """

    model: str
    names: tuple[str, ...]
    estimates: FloatArray
    vcov: FloatArray
    rss: float
    df: int
    n: int
    converged: bool
    message: str
    groups: tuple[str, ...] = ("all",)
    per_group: frozenset[str] = field(default_factory=frozenset)
    at_bound: tuple[str, ...] = ()

    @property
    def n_params(self) -> int:
        return len(self.names)

    @property
    def se(self) -> FloatArray:
        """Standard errors ``sqrt(diag(vcov))``."""
        return np.sqrt(np.diag(self.vcov))

    @property
    def sigma(self) -> float:
        """Residual standard error ``sqrt(RSS / df)``."""
        return float(np.sqrt(self.rss / self.df)) if self.df > 0 else np.nan

    @property
    def loglik(self) -> float:
        """Gaussian log-likelihood with the ML variance ``RSS / n``."""
        return -0.5 * self.n * (np.log(2 * np.pi) + np.log(self.rss / self.n) + 1.0)

    @property
    def aic(self) -> float:
        """``-2 logLik + 2 (p + 1)`` as drc prints it."""
        return -2.0 * self.loglik + 2.0 * (self.n_params + 1)

    @property
    def aicc(self) -> float:
        """``AIC + 2k(k+1)/(n-k-1)`` with ``k = p + 1``; NaN if ``n <= k + 1``."""
        k = self.n_params + 1
        return self.aic + 2.0 * k * (k + 1) / (self.n - k - 1) if self.n > k + 1 else np.nan

    def t_quantile(self, level: float = 0.95) -> float:
        """Two-sided t quantile on the residual df."""
        return float(special.stdtrit(self.df, 0.5 + level / 2.0)) if self.df > 0 else np.nan

    def index(self, param: str, group: str | None = None) -> int | None:
        """Position of a curve parameter (for ``group``); None if fixed."""
        if param in self.per_group:
            if group is None:
                raise ValueError(f"parameter {param!r} is per group; name the group")
            return self.names.index(f"{param}:{group}")
        return self.names.index(param) if param in self.names else None

    def value(self, param: str, group: str | None = None) -> float:
        """Estimate of a curve parameter (fixed value for LL.3's c etc.)."""
        i = self.index(param, group)
        return float(self.estimates[i]) if i is not None else MODELS[self.model].fixed[param]

    def ed_vector(self, p: float, groups: Sequence[str | None]) -> tuple[FloatArray, FloatArray]:
        """Relative ED_p for several groups and their joint delta-method covariance.

        ED_p is the dose where the response lies p % of the way from d to c:
        ``ED_p = e ((1 - p/100)**(-1/f) - 1)**(1/b)``, i.e. ``e (p/(100-p))**(1/b)``
        for LL.3/LL.4.

        Returns
        -------
        est : numpy.ndarray
            ED_p per group.
        cov : numpy.ndarray
            ``G vcov G'`` with ``G`` the gradients w.r.t. all parameters.
        """
        est = np.empty(len(groups))
        grad = np.zeros((len(groups), self.n_params))
        for row, g in enumerate(groups):
            est[row], partial = _ed_and_partials(p, self.value("b", g), self.value("e", g), self.value("f", g))
            for k, dk in partial.items():
                i = self.index(k, g)
                if i is not None:
                    grad[row, i] = dk
        return est, grad @ self.vcov @ grad.T

    def ed(self, p: float, group: str | None = None, level: float = 0.95) -> Estimate:
        """ED_p with delta-method SE and CI ``est +/- t(df) SE`` (drc ``ED``)."""
        est, cov = self.ed_vector(p, [group])
        se = float(np.sqrt(cov[0, 0]))
        half = self.t_quantile(level) * se
        return Estimate(float(est[0]), se, float(est[0] - half), float(est[0] + half))


def _ed_and_partials(p: float, b: float, e: float, f: float) -> tuple[float, dict[str, float]]:
    """ED_p and its partial derivatives w.r.t. b, e and f."""
    q = p / 100.0
    k = (1.0 - q) ** (-1.0 / f) - 1.0
    ed = e * k ** (1.0 / b)
    dk_df = (1.0 - q) ** (-1.0 / f) * np.log(1.0 - q) / f**2
    return ed, {"b": -ed * np.log(k) / b**2, "e": ed / e, "f": ed / (b * k) * dk_df}


# --------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------


def _failed(
    design: _Design, n: int, message: str, per_group: frozenset[str], at_bound: tuple[str, ...] = ()
) -> FitResult:
    p = design.n_params
    return FitResult(
        design.model.name,
        design.names,
        np.full(p, np.nan),
        np.full((p, p), np.nan),
        np.nan,
        n - p,
        n,
        False,
        message,
        design.groups,
        per_group,
        at_bound,
    )


def _data_problem(x: FloatArray, y: FloatArray, n_params: int) -> str | None:
    """Reason why the data cannot be fitted, or None."""
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return "data contain NaN or infinite values"
    if np.any(x < 0):
        return "negative doses"
    if x.size <= n_params:
        return f"too few points ({x.size}) for {n_params} parameters"
    if np.unique(x[x > 0]).size < 2:
        return "fewer than 2 distinct positive doses"
    if np.ptp(y) == 0:
        return "all responses are equal"
    return None


def _make_params(design: _Design, start: FloatArray) -> list[lmfit.Parameter]:
    """lmfit parameters ``p0, p1, ...`` with bounds on b, ln e and f, then the unbounded guard
    parameter (:data:`QR_GUARD`, value 0) last.

    A list, not an ``lmfit.Parameters`` (no expression interpreter per fit): :func:`levenberg_marquardt`
    reads their bounds and internal starting values.
    """
    lx_pos = design.lx[np.isfinite(design.lx)]
    margin = E_DECADES * np.log(10.0)
    bounds = {"b": (-B_BOUND, B_BOUND), "e": (lx_pos.min() - margin, lx_pos.max() + margin), "f": F_BOUNDS}
    import lmfit

    params = []
    for i, name in enumerate(design.names):
        lo, hi = bounds.get(name.split(":")[0], (-np.inf, np.inf))
        inset = 1e-3 * (hi - lo) if np.isfinite(hi - lo) else 0.0
        value = float(min(max(start[i], lo + inset), hi - inset))
        params.append(lmfit.Parameter(f"p{i}", value=value, min=lo, max=hi))
    params.append(lmfit.Parameter(f"p{design.n_params}", value=0.0))
    return params


def _at_bound(
    params: Sequence[lmfit.Parameter], values: FloatArray, names: tuple[str, ...]
) -> tuple[str | None, tuple[str, ...]]:
    """(the reason, the names of the parameters at their bounds), or (None, ()) at an interior optimum."""
    found = []
    for i, name in enumerate(names):
        par, value = params[i], float(values[i])
        width = par.max - par.min
        if np.isfinite(width) and min(value - par.min, par.max - value) < 1e-6 * width:
            found.append((name, value))
    if not found:
        return None, ()
    name, value = found[0]
    what = "ln e" if name.startswith("e") else name
    return f"{what} at its bound ({value:.4g}); curve not estimable from these data", tuple(n for n, _ in found)


def rss_hessian_numeric(design: _Design, theta: FloatArray, y: FloatArray) -> FloatArray:
    """Hessian of the RSS w.r.t. the reported parameters by central differences (the check on
    :meth:`_Design.rss_hessian`, which the fits use).

    Differences the analytic gradient with steps ``1e-5 max(|theta_j|, 1e-3)``;
    the truncation error is ``O(step^2)``, about 1e-10 relative.
    """
    p = theta.size
    hess = np.empty((p, p))
    for j in range(p):
        h = 1e-5 * max(abs(theta[j]), 1e-3)
        up, down = theta.copy(), theta.copy()
        up[j] += h
        down[j] -= h
        hess[:, j] = (design.rss_gradient(up, y) - design.rss_gradient(down, y)) / (2 * h)
    return 0.5 * (hess + hess.T)


def fit_joint(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    group: npt.ArrayLike | None = None,
    model: str = "LL.4",
    per_group: Collection[str] = PARALLEL,
    groups: Sequence[str] | None = None,
    start: Mapping[str, float] | None = None,
    memo: FitMemo | None = None,
) -> FitResult:
    """Fit one log-logistic model jointly to several groups (drc ``pmodels``).

    Parameters
    ----------
    x, y : array_like
        Doses (>= 0) and responses.
    group : array_like of str, optional
        Group label per observation; one group ``"all"`` if omitted.
    model : {"LL.3", "LL.4", "LL.5"}
        Curve model.
    per_group : collection of str
        Curve parameters estimated per group; the others are shared. Presets:
        :data:`PARALLEL` (own e), :data:`COMMON_CD` (own b, e, f),
        :data:`FREE` (all own), :data:`COMMON_E` (all shared).
    groups : sequence of str, optional
        Group order for parameter names (default: sorted labels). Must contain
        every label present in ``group``.
    start : mapping, optional
        Starting values by parameter name (``"b"``, ``"e:<group>"``; ``e`` on its
        natural scale), e.g. from a related fit; parameters not given start from
        the data. Only the path to the optimum changes, not the optimum.
    memo : FitMemo, optional
        Where single-curve fits (one group, or each group of a model without shared parameters)
        are looked up and kept, for a caller that fits the same curve repeatedly.

    Returns
    -------
    FitResult
        Never raises for bad data: ``converged`` is False with a ``message``.

    Raises
    ------
    ValueError
        For an unknown ``model`` or labels in ``group`` absent from ``groups``
        (programming errors, not data problems).
    """
    x_arr = np.asarray(x, dtype=float).ravel()
    y_arr = np.asarray(y, dtype=float).ravel()
    grp = np.full(x_arr.size, "all") if group is None else np.asarray(group, dtype=str).ravel()
    labels = tuple(groups) if groups is not None else tuple(sorted(set(grp.tolist())))
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose from {sorted(MODELS)}")
    if not set(grp.tolist()) <= set(labels):
        raise ValueError("group labels missing from `groups`")
    curve_model = MODELS[model]
    own = frozenset(per_group) & set(curve_model.params) if len(labels) > 1 else frozenset()
    design = _build_design(x_arr, grp, curve_model, own, labels)
    problem = _data_problem(x_arr, y_arr, design.n_params)
    empty = [g for g in labels if not np.any(grp == g)]
    if problem is None and empty:
        problem = f"no data for group(s) {', '.join(empty)}"
    if problem is not None:
        return _failed(design, x_arr.size, problem, own)
    if own and own == frozenset(curve_model.params):
        return _fit_free(design, x_arr, y_arr, grp, own, memo)
    if len(labels) == 1 and not start and memo is not None:
        return memo.fit(design, x_arr, y_arr, grp, own)
    return _optimise(design, x_arr, y_arr, grp, own, start)


class FitMemo:
    """Single-curve fits already done, by (model, group label, data), for a caller that fits the same
    curve several times: a plate's reference curve recurs in every pairwise comparison with it
    (:func:`cr51.potency.analyse_plate` keeps one per plate). Identical data give the identical result."""

    def __init__(self) -> None:
        self._fits: dict[tuple[str, tuple[str, ...], bytes, bytes], FitResult] = {}

    def fit(self, design: _Design, x: FloatArray, y: FloatArray, grp: npt.NDArray[np.str_], own: frozenset[str]):
        key = (design.model.name, design.groups, x.tobytes(), y.tobytes())
        hit = self._fits.get(key)
        if hit is None:
            hit = self._fits[key] = _optimise(design, x, y, grp, own)
        return hit

    def __len__(self) -> int:
        return len(self._fits)


def _fit_free(
    design: _Design,
    x: FloatArray,
    y: FloatArray,
    grp: npt.NDArray[np.str_],
    per_group: frozenset[str],
    memo: FitMemo | None,
) -> FitResult:
    """A model with no shared parameter: its RSS is a sum over groups, so the joint optimum is
    the set of per-group optima. Each group is fitted alone; the joint covariance is block
    diagonal, ``2 sigma^2 H_g^-1`` per block with the pooled ``sigma^2 = RSS / (n - p)``.
    """
    n, p = x.size, design.n_params
    theta = np.empty(p)
    vcov = np.zeros((p, p))
    rss = 0.0
    position = {name: i for i, name in enumerate(design.names)}
    parts = []
    for g in design.groups:
        part = fit_joint(x[grp == g], y[grp == g], None, design.model.name, COMMON_E, memo=memo)
        if not part.converged:
            return _failed(design, n, f"group {g}: {part.message}", per_group)
        parts.append((g, part))
        rss += part.rss
    sigma2 = rss / (n - p)
    for g, part in parts:
        idx = np.array([position[f"{k}:{g}"] for k in part.names])
        theta[idx] = part.estimates
        vcov[np.ix_(idx, idx)] = part.vcov * (sigma2 / (part.rss / part.df))
    return FitResult(design.model.name, design.names, theta, vcov, rss, n - p, n, True, "ok", design.groups, per_group)


#: The guard column of every MINPACK fit (:func:`_optimise`). SciPy's C translation of MINPACK
#: (``scipy/optimize/src/minpack.c``; SciPy 1.17.1 is pinned) has an off-by-one in ``qrfac``: when the
#: downdated norm of a column ``k`` of the Jacobian has lost most of its digits
#: (``0.05 (rdiag_k / wa_k)^2 <= eps``: a column nearly in the span of the pivot columns before it, e.g.
#: slope and ln e of a steep curve), the norm is recomputed with ``enorm(m - j, &a[(j + 1) + lda k])``,
#: one element too many (Fortran: ``enorm(m - j, a(j + 1, k))`` with 1-based ``j``). The extra element
#: is the first entry of the next column, or, for the last column slot, the 8 bytes past the end of the
#: Jacobian buffer, whose contents depend on what the process allocated before (valgrind: "Invalid
#: read of size 8 ... 0 bytes after a block" in ``enorm`` called from ``qrfac``). That norm steers the
#: column pivoting, so the same data gave results differing in the last digits with the plates and
#: allocations before it in the process (1 to 4 fits in 400 of an affected curve in a loop, 2 in 5
#: after heavy heap churn; an ill-conditioned fit carries it to ``ic50_se`` at 1e-10 relative).
#: Every fit therefore gets one more residual, ``QR_GUARD * g``, and one more parameter ``g``, last
#: (start 0, unbounded): its Jacobian column is ``QR_GUARD`` on that extra row and 0 elsewhere. It is
#: orthogonal to the curve columns and smaller than any of them that is not numerically zero, so the
#: pivoting leaves it in the last slot, and its norm is never recomputed (its entries in the pivot rows
#: are 0, so its norm does not fall); the other slots' stray element stays inside the matrix (for the
#: slot before the guard it is the guard's 0: the norm Fortran MINPACK computes). The guard's gradient
#: and step are exactly 0 (``g`` stays 0), and its zeros add nothing to the sums the curve parameters'
#: steps are made of: apart from the stray read the fits are those without the guard (the whole-run
#: result tables of ``tools/golden_run.py`` are byte-identical).
QR_GUARD = 1e-150


def _optimise(
    design: _Design,
    x: FloatArray,
    y: FloatArray,
    grp: npt.NDArray[np.str_],
    per_group: frozenset[str],
    given: Mapping[str, float] | None = None,
) -> FitResult:
    # MINPACK asks for the Jacobian at the point whose residuals it evaluated last (the start, then each
    # accepted step): the residual keeps its curve partials, and the Jacobian at that same point reuses
    # them instead of evaluating the curve again (the same numbers: the curve value does not depend on
    # how many derivatives are taken along)
    last: list = [None, None]
    n, p = x.size, design.n_params

    def residual(values: FloatArray) -> FloatArray:
        theta = values[:p]
        value, partials, _ = design._terms(theta, 1)
        last[0], last[1] = theta, partials
        out = np.empty(n + 1)
        np.subtract(value, y, out=out[:n])
        out[n] = QR_GUARD * values[p]
        return out

    def jacobian(values: FloatArray) -> FloatArray:
        theta = values[:p]
        if last[0] is not None and np.array_equal(theta, last[0]):
            jac = design._jacobian(last[1])
        else:
            jac = design.evaluate(theta)[1]
        out = np.zeros((n + 1, p + 1))
        out[:n, :p] = jac
        out[n, p] = QR_GUARD
        return out

    start = _start(design, x, y, grp, given or {})
    params = _make_params(design, start)
    out = levenberg_marquardt(residual, jacobian, params)
    theta = design.to_reported(out.values[:p])
    if not out.success or not np.all(np.isfinite(theta)):
        return _failed(design, n, f"optimiser did not converge: {out.message}", per_group)
    bound, at = _at_bound(params, out.values, design.names)
    if bound is not None:
        return _failed(design, n, bound, per_group, at)
    rss = float(np.sum(out.residual[:n] ** 2))
    vcov, problem = _drc_vcov(design, theta, y, rss / (n - p))
    return FitResult(
        design.model.name,
        design.names,
        theta,
        vcov,
        rss,
        n - p,
        n,
        problem is None,
        problem or "ok",
        design.groups,
        per_group,
    )


@dataclass(frozen=True)
class Minimum:
    """Where :func:`levenberg_marquardt` stopped: the parameter values (bounds applied), the residuals
    there, and lmfit's verdict (``success``, ``message``)."""

    values: FloatArray
    residual: FloatArray
    success: bool
    message: str


class _TooManyEvaluations(Exception):
    """Raised inside MINPACK's loop to stop it (lmfit's ``AbortFitException``)."""


#: lmfit 1.3.4's ``Minimizer.leastsq`` options for ``scipy.optimize.leastsq`` (its ``lskws``).
_LEASTSQ_OPTIONS = {"col_deriv": 0, "ftol": 1.5e-8, "xtol": 1.5e-8, "gtol": 0.0, "epsfcn": 1.0e-10, "factor": 100}


def levenberg_marquardt(
    residual: Callable[[FloatArray], FloatArray],
    jacobian: Callable[[FloatArray], FloatArray],
    params: Sequence[lmfit.Parameter],
    max_nfev: int | None = None,
) -> Minimum:
    """Least squares by MINPACK's Levenberg-Marquardt, exactly as ``lmfit.Minimizer(...).minimize(
    method="leastsq", Dfun=...)`` does it (lmfit 1.3.4, pinned), for ``params`` bounded on both sides or
    not at all.

    ``residual(values)`` and ``jacobian(values)`` take the parameter values as one array (in the order
    of ``params``) instead of an ``lmfit.Parameters``: lmfit's Minuit-style bounds transform (each
    ``Parameter``'s ``setup_bounds`` gives the internal start; ``min + (sin(u) + 1) (max - min) / 2``
    and the gradient scale ``cos(u) (max - min) / 2`` per evaluation; values clipped to the bounds as
    ``Parameter.value`` does) is applied to the whole vector at once. lmfit applies it parameter by
    parameter through ``Parameters`` and an expression interpreter, which cost ~0.5 ms a fit, a third of
    the per-plate fits (docs/benchmarks.md). The numbers are lmfit's to the last bit: the same MINPACK
    call with lmfit's options, the same transform expressions evaluated in the same order, and
    ``tests/test_fit.py`` compares both on curves, joint models, bounds and failing fits. lmfit's
    evaluation limit (``max_nfev``; by default ``2000 (nvarys + 1)`` residuals, counted from -2 for
    SciPy's two checking calls) stops the loop as lmfit's does; the message then says so (lmfit's says
    "Tolerance seems to be too small"). A non-finite residual or Jacobian raises ``ValueError``, as
    lmfit's default ``nan_policy="raise"`` does.
    """
    from scipy.optimize import leastsq

    lo = np.array([par.min for par in params], dtype=float)
    hi = np.array([par.max for par in params], dtype=float)
    if np.any(np.isfinite(lo) != np.isfinite(hi)):
        raise ValueError("one-sided bounds are not supported (lmfit's sqrt transform)")
    bounded = np.flatnonzero(np.isfinite(lo))
    b_lo, b_hi = lo[bounded], hi[bounded]
    b_width = b_hi - b_lo
    start = np.array([par.setup_bounds() for par in params])
    max_nfev = 2000 * (len(params) + 1) if max_nfev is None else max_nfev
    count = -2  # lmfit: "correct for pre-fit initialization/checks"

    def external(internal: FloatArray) -> FloatArray:
        values = np.array(internal, dtype=float)  # unbounded: the internal value itself
        # Parameter.value's setter clips to the bounds (only a bounded value can lie outside them)
        values[bounded] = np.clip(b_lo + (np.sin(internal[bounded]) + 1) * b_width / 2.0, b_lo, b_hi)
        return values

    def fcn(internal: FloatArray) -> FloatArray:
        nonlocal count
        values = external(internal)
        count += 1
        if count > max_nfev:
            raise _TooManyEvaluations
        return _finite(residual(values))

    def dfun(internal: FloatArray) -> FloatArray:
        scale = np.ones(internal.size)
        scale[bounded] = np.cos(internal[bounded]) * b_width / 2.0
        jac = _finite(jacobian(external(internal)))
        jac *= scale
        return jac

    with np.errstate(all="ignore"):
        try:
            best, cov, _, _, ier = leastsq(
                fcn, start, Dfun=dfun, full_output=1, maxfev=2 * max_nfev, **_LEASTSQ_OPTIONS
            )
        except _TooManyEvaluations:
            values = np.full(len(params), np.nan)
            return Minimum(values, values, False, f"more than {max_nfev} function evaluations")
        values = external(best)
        resid = residual(values)
    message = {0: _INVALID, 1: _OK, 2: _OK, 3: _OK, 4: _NO_EFFECT}.get(ier, _TOLERANCE)
    if cov is None:
        message = f"{message} Could not estimate error-bars."
    return Minimum(values, resid, ier in (1, 2, 3, 4), message)


# lmfit's messages (Minimizer.leastsq) for MINPACK's ``ier``
_OK = "Fit succeeded."
_INVALID = "Invalid Input Parameters. I.e. more variables than data points given, tolerance < 0.0, or no data provided."
_NO_EFFECT = "One or more variable did not affect the fit."
_TOLERANCE = "Tolerance seems to be too small."


def _finite(arr: FloatArray) -> FloatArray:
    """``arr`` as float64; ``ValueError`` if it holds NaN or infinity (lmfit's ``coerce_float64`` check;
    called where floating-point warnings are off)."""
    arr = np.asarray(arr, dtype=np.float64)
    if not math.isfinite(arr.sum()):
        raise ValueError("NaN or infinite values in the residuals or Jacobian of a fit")
    return arr


def _drc_vcov(design: _Design, theta: FloatArray, y: FloatArray, sigma2: float) -> tuple[FloatArray, str | None]:
    """``2 sigma^2 H^-1``; NaN and a reason if H is not positive definite."""
    hess = design.rss_hessian(theta, y)
    try:
        np.linalg.cholesky(hess)
    except np.linalg.LinAlgError:
        return np.full_like(hess, np.nan), "Hessian of the RSS is not positive definite (parameters not identifiable)"
    return 2.0 * sigma2 * np.linalg.inv(hess), None


def fit_curve(x: npt.ArrayLike, y: npt.ArrayLike, model: str = "LL.4", memo: FitMemo | None = None) -> FitResult:
    """Fit a single log-logistic curve (``fit_joint`` with one group).

    Parameters
    ----------
    x, y : array_like
        Doses (>= 0, 0 meaning untreated) and responses.
    model : {"LL.3", "LL.4", "LL.5"}
        Curve model.
    memo : FitMemo, optional
        See :func:`fit_joint`.

    Returns
    -------
    FitResult
        Parameter names are the model's (``b, c, d, e[, f]``).
    """
    return fit_joint(x, y, None, model, COMMON_E, memo=memo)


# --------------------------------------------------------------------------
# Ratios, Fieller, F tests
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class RatioEstimate:
    """Ratio ``mu_a / mu_b`` with delta-method SE/CI and Fieller CI.

    ``lo``/``hi`` are the Fieller limits, NaN when the interval is unbounded
    (then ``bounded`` is False and ``reason`` says why).
    """

    ratio: float
    se: float
    lo: float
    hi: float
    delta_lo: float
    delta_hi: float
    bounded: bool
    reason: str


def fieller_ratio(
    mu_a: float, mu_b: float, v11: float, v22: float, v12: float, df: float, level: float = 0.95
) -> RatioEstimate:
    """Ratio of two correlated estimates with Fieller's and the delta-method CI.

    With ``q = t^2((1 + level)/2, df)`` (as drc ``EDcomp(interval="fieller")``)::

        f0 = mu_a mu_b - q v12
        D  = f0^2 - (mu_a^2 - q v11)(mu_b^2 - q v22)
        limits = (f0 -/+ sqrt(D)) / (mu_b^2 - q v22)

    The interval is unbounded (limits NaN) when ``mu_b^2 - q v22 <= 0`` or
    ``D < 0``. The delta-method variance is
    ``(v11 - 2 r v12 + r^2 v22) / mu_b^2`` with ``r = mu_a / mu_b``; its CI is
    ``r +/- t SE``.
    """
    t = float(special.stdtrit(df, 0.5 + level / 2.0)) if df > 0 else np.nan
    q = t * t
    ratio = mu_a / mu_b if mu_b != 0 else np.nan
    se = float(np.sqrt(max(v11 - 2 * ratio * v12 + ratio**2 * v22, 0.0)) / abs(mu_b)) if mu_b != 0 else np.nan
    f0 = mu_a * mu_b - q * v12
    denom = mu_b**2 - q * v22
    disc = f0**2 - (mu_a**2 - q * v11) * denom
    delta = (ratio - t * se, ratio + t * se)
    if not np.isfinite(q) or not np.isfinite(disc):
        return RatioEstimate(
            ratio, se, np.nan, np.nan, *delta, False, "Fieller interval not computable (no residual df or NaN inputs)"
        )
    if denom <= 0:
        return RatioEstimate(
            ratio,
            se,
            np.nan,
            np.nan,
            *delta,
            False,
            "Fieller interval unbounded: denominator not significantly different from 0",
        )
    if disc < 0:
        return RatioEstimate(
            ratio, se, np.nan, np.nan, *delta, False, "Fieller interval unbounded: negative discriminant"
        )
    root = np.sqrt(disc)
    return RatioEstimate(ratio, se, (f0 - root) / denom, (f0 + root) / denom, *delta, True, "")


def ed_ratio(fit: FitResult, p: float, group_a: str, group_b: str, level: float = 0.95) -> RatioEstimate:
    """Ratio ED_p(group_a) / ED_p(group_b) from one joint fit (drc ``EDcomp``)."""
    est, cov = fit.ed_vector(p, [group_a, group_b])
    return fieller_ratio(est[0], est[1], cov[0, 0], cov[1, 1], cov[0, 1], fit.df, level)


@dataclass(frozen=True)
class FTest:
    """Extra-sum-of-squares F test of a reduced model against a full one."""

    f: float
    df1: int
    df2: int
    p: float


def f_test(rss_reduced: float, df_reduced: int, rss_full: float, df_full: int) -> FTest:
    """``F = ((RSS_r - RSS_f)/(df_r - df_f)) / (RSS_f/df_f)`` on (df_r - df_f, df_f).

    Returns NaN statistics when the inputs do not define a test.
    """
    df1 = df_reduced - df_full
    if df1 <= 0 or df_full <= 0 or not np.isfinite(rss_reduced) or not np.isfinite(rss_full) or rss_full <= 0:
        return FTest(np.nan, df1, df_full, np.nan)
    f = max((rss_reduced - rss_full) / df1, 0.0) / (rss_full / df_full)
    return FTest(float(f), df1, df_full, float(special.fdtrc(df1, df_full, f)))


def compare_fits(reduced: FitResult, full: FitResult) -> FTest:
    """:func:`f_test` for two fits of the same data."""
    return f_test(reduced.rss, reduced.df, full.rss, full.df)
