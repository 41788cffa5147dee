"""The training engine's per-round columns of ``rounds.csv``, filled by a round extension.

Every federated run records how its successful clients were trained (``clients_vectorized``:
how many the vectorized engine trained) and what compiling the lockstep step cost
(``compile_seconds``: the sum of the clients' ``compile-seconds`` shares), whichever engine it
uses -- a sequential run records 0 and 0. The numbers come from the clients' ``fedsim.engine``
and ``compile-seconds`` metrics (:class:`fedsim.core.protocol.TrainingEngine`); the round loop
knows nothing of engines, so :func:`fedsim.runs.server.execute` adds :class:`EngineColumns` to
every run's extensions.
"""

from __future__ import annotations

from fedsim.core.extension import RoundExtension, RoundRecord
from fedsim.core.protocol import COMPILE_SECONDS, ENGINE, ClientReply, TrainingEngine


class EngineColumns(RoundExtension):
    """Fills ``clients_vectorized`` and ``compile_seconds`` from the round's successful training replies."""

    stateful = False  # nothing kept between rounds: not in checkpoints (those of earlier runs still load)

    def on_train_replies(self, record: RoundRecord, replies: list[ClientReply]) -> None:
        record.row["clients_vectorized"] = sum(int(r.metrics.get(ENGINE, 0)) == TrainingEngine.VECTORIZED
                                               for r in replies)
        record.row["compile_seconds"] = sum(float(r.metrics.get(COMPILE_SECONDS, 0.0)) for r in replies)
