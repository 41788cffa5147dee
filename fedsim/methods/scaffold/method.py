"""Engine support for ``scaffold`` (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning", ICML 2020).

The strategy (:class:`fedsim.strategies.scaffold.Scaffold`) keeps the server control variate c and
the clients' side (:mod:`fedsim.clients.scaffold`) keeps each c_i in the client-state store. What
the server side does around them lives here:

* **start** -- c starts at zero over the initial model's trainable parameters, and N (the whole
  population, ``partition.num_clients``) is what c's update divides by;
* **rules** -- settings under which SCAFFOLD's c could drift from the mean of the c_i are refused:
  ``time.policy.train_dropped`` (dropped clients would store a new c_i whose delta the server
  never adds); the DP wrappers (they would clip and noise the model update but not delta c_i)
  refuse ``scaffold`` as their base in the strategy registry, and streaming refuses it as not a
  plain weighted mean (:mod:`fedsim.runs.settings`);
* **bytes** -- a client uploads its model and delta c_i (c's size: the trainable parameters), so
  the simulated clock's upload is both; the download (x and c) is counted from the task itself.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import Strategy

from fedsim.core.extension import RoundExtension
from fedsim.models import build_model
from fedsim.outputs.recorder import RunRecorder
from fedsim.strategies.scaffold import Scaffold

from ..base import Method

if TYPE_CHECKING:  # type-only: the config and the plan are resolved above this package
    from fedsim.config import ExperimentConfig
    from fedsim.runs.plan import RunPlan


class ScaffoldMethod(Method):
    """Weight exchange plus control variates: c prepared at the start, twice the bytes each way."""

    refuses_dropped_training = ("scaffold: a dropped client would store its new control variate c_i while the server "
                                "discards its delta, so c would no longer be the mean of the c_i")

    def upload_bytes(self, config: ExperimentConfig, model_bytes: int, output_width: int, num_classes: int) -> int:
        """The model and delta c_i (the trainable parameters' record)."""
        model = config.model
        return model_bytes + _buffer_free_bytes(model.name, num_classes, model.representation_dim, model_bytes)

    def start(self, strategy: Strategy, plan: RunPlan, recorder: RunRecorder) -> tuple[ArrayRecord, list[RoundExtension]]:
        """The seeded initial model and the weight exchange's extensions; c = 0 over its parameters, N clients."""
        assert isinstance(strategy, Scaffold), "scaffold's method drives Scaffold"
        arrays, extensions = super().start(strategy, plan, recorder)
        strategy.prepare(dict(plan.initial_model().named_parameters()), plan.num_clients)
        return arrays, extensions


@lru_cache(maxsize=64)
def _buffer_free_bytes(name: str, num_classes: int, representation_dim: int, model_bytes: int) -> int:
    """Bytes of the trainable parameters' record: the model's record less its buffers' entries.

    Each entry of a record counts on its own (header, data, key), and no buffer's shape depends on
    the input channels, so ``model_bytes`` less the buffers' entries is exact for any dataset.
    """
    model = build_model(name, num_classes, representation_dim)
    parameters = dict(model.named_parameters())
    buffers = {key: Array(value.detach().numpy()) for key, value in model.state_dict().items() if key not in parameters}
    return model_bytes - ArrayRecord(buffers).count_bytes() if buffers else model_bytes
