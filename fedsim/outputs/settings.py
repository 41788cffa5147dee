"""The ``[output]`` settings: where and how a run directory is written (:mod:`fedsim.outputs`)."""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.settings import Section, problems, setting

RESULT_FORMATS = ("csv", "parquet")


@dataclass
class OutputSettings(Section):
    """Where and how the run directory is written (``[output]``)."""

    dir: str = setting("runs", "parent folder of run directories")
    name: str = setting("", "the run directory's name; `\"\"` = `<strategy>-<dataset>-<scheme>-s<seed>-<time>`")
    format: str = setting("csv", "tables as `csv` or `parquet`")
    overwrite: bool = setting(False, "replace an existing fedsim run directory of that name (`--overwrite`); any "
                              "other folder is refused")
    figures: bool = setting(True, "draw figures at the end")
    checkpoint_every: int = setting(1, "rounds between checkpoints (the last round always gets one); 0 = none")
    tensorboard: bool = setting(False, "also write TensorBoard event files to `<run dir>/tensorboard/` "
                                "(`--tensorboard`)")

    def check(self, prefix: str = "output") -> list[str]:
        return problems(prefix, [
            (bool(self.dir), "dir", self.dir, "must not be empty"),
            ("/" not in self.name and self.name not in (".", ".."), "name", self.name,
             "must be a plain directory name (no '/')"),
            (self.format in RESULT_FORMATS, "format", self.format, f"allowed: {', '.join(RESULT_FORMATS)}"),
            (self.checkpoint_every >= 0, "checkpoint_every", self.checkpoint_every,
             "must be >= 0 (rounds between checkpoints; 0 = none)"),
        ])
