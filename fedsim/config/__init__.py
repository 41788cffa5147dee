"""The experiment configuration: its schema and its parsing (TOML files, ``section.key=value``).

:class:`ExperimentConfig` is the typed schema; :mod:`.validation` checks a config's values by
asking the modules that own each rule, and its :func:`~fedsim.config.validation.load_config`
(also ``fedsim.load_config``) reads, overrides and validates in one call.
"""

from __future__ import annotations

from .schema import ConfigError, ExperimentConfig, from_dict, parse_override, problem, read_config, set_value

__all__ = ["ConfigError", "ExperimentConfig", "from_dict", "parse_override", "problem", "read_config", "set_value"]
