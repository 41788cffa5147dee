"""MOON (``moon``): FedAvg's aggregation, clients trained with a model-contrastive term.

Li, He and Song, "Model-Contrastive Federated Learning", CVPR 2021. The server is FedAvg
(:class:`~fedsim.strategies.averaging.WeightedFedAvg`: the weighted mean, on the stack or
streamed by workers); MOON changes only the clients' loss, whose weight ``mu`` and temperature
the strategy sends in every training task's config, as Flower's FedProx sends ``proximal-mu``.
The client side (the term, the previous local model it keeps) is :mod:`fedsim.clients.moon`.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from fedsim.core.protocol import MOON_MU, MOON_TEMPERATURE

from .averaging import WeightedFedAvg


class Moon(WeightedFedAvg):
    """FedAvg whose clients add ``mu * l_con`` to their loss.

    Parameters
    ----------
    mu : float (default: 1.0)
        Weight of the model-contrastive term, >= 0 (the paper uses 5 on CIFAR-10; 0 is FedAvg).
    temperature : float (default: 0.5)
        The term's temperature tau, > 0.
    """

    clients_report_hook_metrics = True  # hook.moon.* per client: the server writes them to hooks.csv

    def __init__(self, mu: float = 1.0, temperature: float = 0.5, **kwargs) -> None:  # noqa: ANN003 - FedAvg's
        if not mu >= 0:
            raise ValueError(f"mu = {mu}: must be >= 0")
        if not temperature > 0:
            raise ValueError(f"temperature = {temperature}: must be > 0")
        super().__init__(**kwargs)
        self.mu = float(mu)
        self.temperature = float(temperature)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """FedAvg's training tasks, their config carrying mu and the temperature."""
        config[MOON_MU] = self.mu
        config[MOON_TEMPERATURE] = self.temperature
        return super().configure_train(server_round, arrays, config, grid)
