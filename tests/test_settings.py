"""Configuration validation: every problem listed, in words a technician can act on."""

import subprocess
import sys
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
