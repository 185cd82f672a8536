"""Configuration validation: every problem listed, in words a technician can act on."""

import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from cr51.settings import ConfigError, check_config, config_hash

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def shipped() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_shipped_config_is_valid():
    check_config(shipped(), SCHEMA)


def test_every_problem_is_listed_with_the_key_and_its_meaning():
    cfg = shipped()
    cfg["qc"]["max_spontaneous_pct_of_max"] = "twenty"
    cfg["batch_count"] = 0
    cfg["potency"]["parallelism_gate"] = "maybe"
    cfg["raw_dri"] = "typo"
    with pytest.raises(ConfigError) as err:
        check_config(cfg, SCHEMA)
    msg = str(err.value)
    assert "qc.max_spontaneous_pct_of_max" in msg and "'twenty' is not of type 'number'" in msg
    assert "spontaneous release" in msg  # the key's description, not just the schema rule
    assert "batch_count" in msg and "potency.parallelism_gate" in msg
    assert "raw_dri" in msg and "spelling" in msg


def test_config_hash_is_stable_and_sensitive():
    a, b = shipped(), shipped()
    assert config_hash(a) == config_hash(b)
    b["qc"]["max_cv_pct"] = 25
    assert config_hash(a) != config_hash(b)


@pytest.mark.slow
def test_snakemake_stops_on_a_bad_value_before_running(tmp_path):
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "snakemake"), "-n", "--config", "batch_count=-3", f"results_dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "config key 'batch_count'" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_documented_nested_override_with_a_site_file_validates(tmp_path):
    """config/README.md: nested keys are changed with a site file layered over the defaults."""
    site = tmp_path / "site.yaml"
    site.write_text("qc:\n  max_spontaneous_pct_of_max: 25\n")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "snakemake"), "-n", "--configfile", "config/config.yaml", str(site),
         "--config", "raw_dir=resources/example", f"results_dir={tmp_path / 'r'}", "settle_seconds=0"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------
# One place for every default: the schema; config.yaml, config/README.md and the typed settings agree
# --------------------------------------------------------------------------


def schema_leaves(schema: dict, prefix: str = "") -> dict[str, object]:
    """{dotted key: default} of every leaf key of the schema."""
    out = {}
    for key, sub in schema["properties"].items():
        if sub.get("type") == "object":
            out.update(schema_leaves(sub, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = sub["default"]
    return out


def leaves(config: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def readme_keys() -> dict[str, object]:
    """{dotted key: default} of the key table of config/README.md (rows like `a.b` / `c` | `x` / `y`)."""
    text = (REPO / "config" / "README.md").read_text()
    section = text.split("## Keys of `config/config.yaml`", 1)[1].split("\n## ", 1)[0]
    out = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        names = [n.strip().strip("`") for n in cells[0].split("/")]
        defaults = [yaml.safe_load(d.strip().strip("`")) for d in cells[1].split(" / ")]
        parent = names[0].rpartition(".")[0]
        for name, default in zip(names, defaults, strict=True):
            out[name if "." in name or not parent else f"{parent}.{name}"] = default
    return out


def test_every_schema_key_has_a_default_in_config_yaml_and_a_row_in_the_readme():
    from cr51.settings import load_schema

    schema = schema_leaves(load_schema(SCHEMA))
    assert leaves(shipped()) == schema  # config.yaml lists every key, at its default
    assert readme_keys() == schema  # config/README.md documents every key with that default


def test_typed_settings_have_exactly_the_schema_keys_and_defaults():
    from dataclasses import fields, is_dataclass

    from cr51.settings import Settings, load_schema

    def field_paths(cls, prefix=""):
        """Dotted config keys of a settings dataclass (Analysis's keys are top-level keys)."""
        hints = typing.get_type_hints(cls)
        out = []
        for f in fields(cls):
            if is_dataclass(hints[f.name]):
                out += field_paths(hints[f.name], prefix if f.name == "analysis" else f"{prefix}{f.name}.")
            else:
                out.append(prefix + f.name)
        return out

    assert sorted(field_paths(Settings)) == sorted(schema_leaves(load_schema(SCHEMA)))
    s = Settings.from_config({})
    assert s.analysis.potency.min_concentrations == 3 and s.analysis.qc.max_cv_pct == 20.0
    assert s.analysis.fit.models == ("LL.4",) and s.analysis.fit.et_ratio is None
    assert is_dataclass(s.analysis.potency.equivalence)


def test_settings_validate_fill_defaults_and_round_trip():
    from cr51.settings import Analysis, Settings

    s = Settings.from_config({"qc": {"max_cv_pct": 15}, "fit": {"models": ["LL.5", "LL.4"]}})
    assert s.analysis.qc.max_cv_pct == 15.0 and s.analysis.qc.max_spontaneous_pct_of_max == 20.0
    assert s.analysis.fit.models == ("LL.5", "LL.4") and s.raw_dir == "raw"
    assert Analysis.from_config(s.analysis.to_dict()) == s.analysis
    assert Analysis.of(s.analysis) is s.analysis
    with pytest.raises(ConfigError, match="potency.min_concentrations"):
        Settings.from_config({"potency": {"min_concentrations": 1}})
    with pytest.raises(ConfigError, match="spelling"):
        Analysis.from_config({"qc": {"max_cv": 15}})


# --------------------------------------------------------------------------
# The three dependency pin lists agree
# --------------------------------------------------------------------------


def pins_pyproject() -> dict[str, str]:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + [d for deps in project["optional-dependencies"].values() for d in deps]
    return {name.lower(): version for name, _, version in (s.partition("==") for s in specs)}


def pins_conda(path: Path) -> dict[str, str]:
    deps = yaml.safe_load(path.read_text())["dependencies"]
    out = {}
    for dep in deps:
        if isinstance(dep, dict):  # the pip: section
            out.update({n.lower(): v for n, _, v in (s.partition("==") for s in dep["pip"])})
        elif "=" in dep:
            name, _, version = dep.partition("=")
            out[name.lower()] = version
    return out


def test_dependency_pins_agree():
    pyproject = pins_pyproject()
    assert all(pyproject.values()), "every pyproject dependency is pinned with =="
    env = pins_conda(REPO / "environment.yml")
    rule_env = pins_conda(REPO / "workflow" / "envs" / "cr51.yaml")
    for name, version in {**env, **rule_env}.items():
        if name == "python":
            continue
        assert pyproject.get(name) == version, f"{name}: pyproject {pyproject.get(name)} vs conda {version}"
    assert env.items() >= rule_env.items(), "workflow/envs/cr51.yaml pins what environment.yml pins"
    # the libraries the numbers depend on are pinned everywhere (they enter the plate-cache key)
    for name in ("numpy", "pandas", "scipy", "lmfit", "wellmap", "openpyxl"):
        assert name in env and name in rule_env and name in pyproject, name
