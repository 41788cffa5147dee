"""The ``[model]`` settings: which network the clients train, and its rules."""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.settings import Section, problems, setting

from . import MODEL_NAMES, parse_architecture


@dataclass
class ModelSettings(Section):
    """Which network every client trains (``[model]``; the zoo is :mod:`fedsim.models`)."""

    name: str = setting("lenet5", "the model every client trains (see Models)")
    representation_dim: int = setting(0, "r > 0 adds a `Linear(flat, r)` representation layer and a bias-free "
                                      "`Linear(r, C)` head")
    architectures: list[str] = setting(help="`latent-distill`: client architectures (`name` or `name@r`), "
                                       "round-robin by client id; `[]` = every client trains `name`", factory=list)

    def widths_and_names(self) -> tuple[set[int], set[str], list[str]]:
        """The representation widths and architecture names ``architectures`` asks for, and its errors."""
        widths, names, errors = set(), set(), []
        for entry in self.architectures:
            try:
                name, width = parse_architecture(entry)
            except ValueError as err:
                errors.append(f"model.architectures: {err}")
                continue
            names.add(name)
            widths.add(self.representation_dim if width is None else width)
        return widths, names, errors

    def check(self, prefix: str = "model") -> list[str]:
        widths, names, errors = self.widths_and_names()
        unknown = sorted(names - set(MODEL_NAMES))
        return errors + problems(prefix, [
            (self.name in MODEL_NAMES, "name", self.name, f"allowed: {', '.join(MODEL_NAMES)}"),
            (self.representation_dim >= 0, "representation_dim", self.representation_dim,
             "must be >= 0 (0 = no representation layer)"),
            (not unknown, "architectures", self.architectures,
             f"unknown architecture {unknown[0] if unknown else ''!r}; allowed: {', '.join(MODEL_NAMES)}"),
            (widths <= {self.representation_dim}, "architectures", self.architectures,
             f"mismatched representation widths {sorted(widths)}: every client shares r = "
             f"model.representation_dim ({self.representation_dim}) so that representations are comparable"),
        ])
