"""The pipeline's settings: validated once, defaults filled from the JSON schema, typed.

Every default is written in one place, ``workflow/schemas/config.schema.yaml``; no module keeps one
of its own. :meth:`Settings.from_config` validates a configuration (:func:`check_config`, every
problem listed in words a technician can act on), fills what it leaves out from the schema's
``default`` values (:func:`with_defaults`) and builds frozen dataclasses, so that a stage reads
``settings.potency.alpha`` instead of ``config.get("potency", {}).get("alpha", 0.05)``.

:class:`Analysis` is the part the numbers depend on (what the batch jobs get and what the plate
cache is keyed on); the rest (:class:`Settings`) only says where files are and how runs are cut up.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

#: The configuration's JSON schema (in the source tree, beside the rules that validate with it).
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration is not valid; ``str(exc)`` lists every problem in words."""


@functools.cache
def _schema(path: str) -> dict:
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def load_schema(path: str | Path = SCHEMA_PATH) -> dict:
    """The configuration schema (a copy: callers may change it)."""
    return copy.deepcopy(_schema(str(path)))


def _where(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def check_config(config: Mapping[str, Any], schema_path: str | Path = SCHEMA_PATH) -> None:
    """Validate ``config`` against the JSON schema; raise :class:`ConfigError` listing all problems."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(_schema(str(schema_path)))
    problems = []
    for err in sorted(validator.iter_errors(config), key=lambda e: list(e.path)):
        key = _where(err.path)
        desc = err.schema.get("description") if isinstance(err.schema, dict) else None
        if err.validator == "additionalProperties":
            problems.append(f"- {err.message} in '{key}': check the spelling against config/README.md")
        else:
            hint = f" ({desc})" if desc else ""
            problems.append(f"- config key '{key}': {err.message}{hint}")
    if problems:
        raise ConfigError("the configuration is not valid:\n" + "\n".join(problems))


def with_defaults(config: Mapping[str, Any], schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``config`` with every key it leaves out set to the schema's ``default`` (nested objects too)."""
    schema = _schema(str(SCHEMA_PATH)) if schema is None else schema
    out = copy.deepcopy(dict(config))
    for key, sub in schema.get("properties", {}).items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if sub.get("type") == "object" and isinstance(out.get(key), Mapping):
            out[key] = with_defaults(out[key], sub)
    return out


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 of the configuration in canonical JSON (recorded with every run)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------
# Typed settings (field names are the config keys; config/README.md documents each)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class QC:
    """``qc:`` — plate QC limits."""

    max_spontaneous_pct_of_max: float
    max_cv_pct: float
    max_vehicle_suppression_pct: float
    max_control_cv_pct: float
    min_max_over_spontaneous: float


@dataclass(frozen=True)
class Outliers:
    """``outliers:`` — the replicate outlier rule."""

    rule: str
    exclude: bool
    tolerance_pct: float


@dataclass(frozen=True)
class Fit:
    """``fit:`` — the dose-response models (the first is the potency model) and the fitted E:T."""

    models: tuple[str, ...]
    et_ratio: float | None
    plausible_lysis_min: float
    plausible_lysis_max: float
    max_ic50_extrapolation: float


@dataclass(frozen=True)
class Equivalence:
    """``potency.equivalence:`` — USP <1032> equivalence margins."""

    slope_ratio_lo: float
    slope_ratio_hi: float
    upper_diff_margin: float
    lower_diff_margin: float


@dataclass(frozen=True)
class Potency:
    """``potency:`` — relative potency, its tests and the combination gate."""

    ci_level: float
    alpha: float
    parallelism_gate: str
    min_concentrations: int
    equivalence: Equivalence


@dataclass(frozen=True)
class Counter:
    """``counter:`` — what the gamma counter's exports must be."""

    nuclide: str


@dataclass(frozen=True)
class Trends:
    """``trends:`` — assay monitoring over assay date (control limits, Westgard rules; docs/trends.md).

    Not part of :class:`Analysis`: no plate's numbers depend on it (the collect job computes the
    trends), so changing it recomputes no plate.
    """

    rules: tuple[str, ...]
    baseline_plates: int
    chart_plates: int


@dataclass(frozen=True)
class Analysis:
    """The settings every number depends on (the batch jobs' parameter; the plate cache's key)."""

    layouts_dir: str
    max_export_bytes: int
    max_layout_bytes: int
    max_xlsx_unzipped_bytes: int
    counter: Counter
    qc: QC
    outliers: Outliers
    fit: Fit
    potency: Potency

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Analysis:
        """From a whole configuration or just its analysis keys (validated; defaults filled)."""
        return _build(cls, _complete(config))

    @classmethod
    def of(cls, settings: Analysis | Mapping[str, Any]) -> Analysis:
        """``settings`` itself, or built from a configuration mapping (for the package's entry points)."""
        return settings if isinstance(settings, Analysis) else cls.from_config(settings)

    def to_dict(self) -> dict[str, Any]:
        """The analysis keys as a plain (JSON) mapping: ``Analysis.from_config(a.to_dict()) == a``."""
        return _plain(dataclasses.asdict(self))


@dataclass(frozen=True)
class Settings:
    """The whole validated configuration."""

    raw_dir: str
    results_dir: str
    batch_count: int
    settle_seconds: float
    inbox_min_share: float
    confirm_cleanout: bool
    stale_after_hours: float
    max_plate_seconds: float
    trends: Trends
    analysis: Analysis

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        """Validate ``config`` (raises :class:`ConfigError`), fill the schema's defaults, build."""
        full = _complete(config)
        return _build(cls, {**full, "analysis": full})


def _complete(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` validated (:class:`ConfigError` otherwise) and completed with the schema's defaults."""
    check_config(config)
    return with_defaults(config)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _convert(tp: Any, value: Any) -> Any:
    """``value`` (from YAML/JSON) as the annotated type ``tp``."""
    if isinstance(value, tp if isinstance(tp, type) else ()) and not dataclasses.is_dataclass(tp):
        return value
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else _build(tp, value)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):  # X | None
        if value is None and type(None) in args:
            return None
        return _convert(next(a for a in args if a is not type(None)), value)
    if origin is tuple:
        return tuple(_convert(args[0], v) for v in value)
    return tp(value)


def _build(cls: type, values: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: _convert(hints[f.name], values[f.name]) for f in dataclasses.fields(cls)})
