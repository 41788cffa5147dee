"""The experiment configuration: its schema, its parsing and its validation.

:class:`ExperimentConfig` (:mod:`.schema`) lists the sections, each a dataclass owned by the
module that reads it; :mod:`.parse` reads TOML files and ``section.key=value`` overrides;
:mod:`.renamed` maps old key names to new ones; :mod:`.validation` checks the values and
resolves the run plan (its :func:`~fedsim.config.validation.load_config` is also
``fedsim.load_config``).
"""

from __future__ import annotations

from fedsim.settings import problem

from .parse import current_name, from_dict, parse_override, read_config, set_value
from .renamed import RenamedKeyWarning
from .schema import ConfigError, ExperimentConfig

__all__ = ["ConfigError", "ExperimentConfig", "RenamedKeyWarning", "current_name", "from_dict", "parse_override", "problem",
           "read_config", "set_value"]
