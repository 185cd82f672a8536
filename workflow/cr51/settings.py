"""Configuration checks with messages a technician can act on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """The configuration is not valid; ``str(exc)`` lists every problem in words."""


def _where(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def check_config(config: dict, schema_path: str | Path) -> None:
    """Validate ``config`` against the JSON schema; raise :class:`ConfigError` listing all problems."""
    import jsonschema

    schema = yaml.safe_load(Path(schema_path).read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
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


def config_hash(config: dict) -> str:
    """sha256 of the configuration in canonical JSON (recorded with every run)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
