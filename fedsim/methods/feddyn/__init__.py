"""FedDyn: the clients' mean state's start, the rules on the config and the averaged model's evaluation."""

from .method import AverageModelEvaluation, FedDynMethod

__all__ = ["AverageModelEvaluation", "FedDynMethod"]
