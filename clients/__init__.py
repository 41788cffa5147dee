"""Client side (imported as ``fedsim.clients``): the ClientApp, the client object, the training loop."""

from .client import LocalClient
from .training import EvalStats, SGDRecipe, TrainStats, evaluate, seeded_generator, to_tensor, train

__all__ = ["EvalStats", "LocalClient", "SGDRecipe", "TrainStats", "evaluate", "seeded_generator",
           "to_tensor", "train"]
