"""Strategies by name: fedsim's averaging family and every applicable ``flwr.serverapp.strategy``.

fedsim's round loop samples clients itself (seeded, by partition id) and hands the strategy a
grid exposing only the sampled nodes, so every strategy is built with ``fraction_train =
fraction_evaluate = 1`` and minimum node counts of 1. Users pass the remaining keyword
arguments (``strategy.kwargs`` or ``name:key=value:key=value`` specs); unknown names and
arguments are refused with the list of what exists, wrong types and ranges with the rule
(:mod:`fedsim.strategies.arguments`).

Not offered: ``FedXgbBagging`` and ``FedXgbCyclic``, which aggregate serialized XGBoost trees,
not the PyTorch models fedsim's clients train.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ConfigRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim.errors import InputError
from fedsim.strategies import stacked  # Flower's strategies on stacked updates
from fedsim.strategies.normalized import FedNova
from fedsim.strategies.contrastive import Moon
from fedsim.strategies.feddyn import FedDyn
from fedsim.core.protocol import DP_ADAPTIVE  # tells the client which clipping mod to apply

from .arguments import check_arguments
from .asynchronous import AsynchronousStrategy, FedAsync, FedBuff
from .averaging import SequentialEMA, UniformAvg, WeightedFedAvg
from .distillation import LatentDistillation
from .scaffold import Scaffold


class StrategyError(InputError):
    """Unknown strategy name, or a keyword argument of the wrong name, type or range."""


class _ClientSideAdaptiveClipping(stacked.DifferentialPrivacyClientSideAdaptiveClipping):
    """Flower's client-side adaptive clipping wrapper, marking its messages for the client mod."""

    def configure_train(self, server_round: int, arrays, config: ConfigRecord, grid: Grid):  # noqa: ANN001, ANN201
        config[DP_ADAPTIVE] = True
        return super().configure_train(server_round, arrays, config, grid)


@dataclass(frozen=True)
class StrategyEntry:
    """How to build one named strategy."""

    cls: type[Strategy]
    summary: str
    # defaults derived from the run: (the clients' learning rate, clients sampled per round) -> kwargs
    defaults: Callable[[float, int], dict[str, Any]] = field(default=lambda lr, clients_per_round: {})
    wraps: bool = False  # a DP wrapper: takes a `base` strategy name
    # takes the clients' SGD momentum (train.momentum) as its `momentum` argument, filled in by the registry
    run_momentum: bool = False


STRATEGIES: dict[str, StrategyEntry] = {
    "fedavg": StrategyEntry(WeightedFedAvg, "FedAvg, weighted by num-examples (or weighted_by_key)"),
    "uniform": StrategyEntry(UniformAvg, "plain mean of client models"),
    "ema": StrategyEntry(SequentialEMA, "sequential EMA w <- beta*w_i + (1-beta)*w, by partition id"),
    "fedavgm": StrategyEntry(stacked.FedAvgM, "FedAvg with server momentum (Hsu et al. 2019)"),
    "fedprox": StrategyEntry(stacked.FedProx, "FedAvg + client proximal term (proximal_mu)"),
    "fedadam": StrategyEntry(stacked.FedAdam, "adaptive server optimiser Adam (Reddi et al. 2021)"),
    "fedyogi": StrategyEntry(stacked.FedYogi, "adaptive server optimiser Yogi"),
    "fedadagrad": StrategyEntry(stacked.FedAdagrad, "adaptive server optimiser Adagrad"),
    "fedmedian": StrategyEntry(stacked.FedMedian, "coordinate-wise median"),
    "fedtrimmedavg": StrategyEntry(stacked.FedTrimmedAvg, "coordinate-wise trimmed mean (beta)"),
    "krum": StrategyEntry(stacked.Krum, "Krum (num_malicious_nodes)"),
    "multikrum": StrategyEntry(stacked.MultiKrum, "Multi-Krum (num_malicious_nodes, num_nodes_to_select)"),
    "bulyan": StrategyEntry(stacked.Bulyan, "Bulyan (num_malicious_nodes; needs n >= 4f + 3)"),
    "qfedavg": StrategyEntry(
        stacked.QFedAvg, "q-FedAvg fair aggregation (q, client_learning_rate = train.lr)",
        defaults=lambda lr, k: {"client_learning_rate": lr, "train_loss_key": "train-loss"},
    ),
    "fednova": StrategyEntry(
        FedNova, "FedNova: normalized averaging by each client's effective local steps (Wang et al. 2020)",
        run_momentum=True,
    ),
    "moon": StrategyEntry(
        Moon, "MOON: FedAvg, clients add a model-contrastive term (mu, temperature; Li et al. 2021)"),
    "fedbuff": StrategyEntry(
        FedBuff, "FedBuff: buffered asynchronous aggregation of stale deltas (buffer_size, server_learning_rate)"),
    "fedasync": StrategyEntry(FedAsync, "FedAsync: mix in every arrival, weighted by staleness (mixing)"),
    "scaffold": StrategyEntry(
        Scaffold, "SCAFFOLD: control variates correct client drift, option II (server_learning_rate)"),
    "feddyn": StrategyEntry(
        FedDyn, "FedDyn: dynamic regularisation, alpha_k per client, cloud = mean + mean state (alpha, "
        "max_grad_norm; Acar et al. 2021)"),
    "latent-distill": StrategyEntry(
        LatentDistillation, "federated distillation of logits + latent representations ([latent_distill])"),
    "dp-fixed-server": StrategyEntry(
        stacked.DifferentialPrivacyServerSideFixedClipping,
        "central DP, server-side fixed clipping around `base` (noise_multiplier, clipping_norm)",
        defaults=lambda lr, k: {"num_sampled_clients": k}, wraps=True,
    ),
    "dp-adaptive-server": StrategyEntry(
        stacked.DifferentialPrivacyServerSideAdaptiveClipping,
        "central DP, server-side adaptive clipping around `base` (noise_multiplier)",
        defaults=lambda lr, k: {"num_sampled_clients": k}, wraps=True,
    ),
    "dp-fixed-client": StrategyEntry(
        stacked.DifferentialPrivacyClientSideFixedClipping,
        "central DP, clients clip (fixedclipping_mod) around `base` (noise_multiplier, clipping_norm)",
        defaults=lambda lr, k: {"num_sampled_clients": k}, wraps=True,
    ),
    "dp-adaptive-client": StrategyEntry(
        _ClientSideAdaptiveClipping,
        "central DP, clients clip adaptively (adaptiveclipping_mod) around `base` (noise_multiplier)",
        defaults=lambda lr, k: {"num_sampled_clients": k}, wraps=True,
    ),
}
STRATEGY_NAMES = tuple(STRATEGIES)
NOT_OFFERED = {
    "fedxgbbagging": "aggregates XGBoost trees, not PyTorch models",
    "fedxgbcyclic": "aggregates XGBoost trees, not PyTorch models",
}

# Arguments fedsim sets itself: sampling happens in fedsim's round loop.
SAMPLING_ARGS = {
    "fraction_train": 1.0,
    "fraction_evaluate": 1.0,
    "min_train_nodes": 1,
    "min_evaluate_nodes": 1,
    "min_available_nodes": 1,
}
_INTERNAL_ARGS = {"strategy", "arrayrecord_key", "configrecord_key", "train_metrics_aggr_fn",
                  "evaluate_metrics_aggr_fn"}
# what a DP wrapper may wrap: not another wrapper, not distillation (no weights), not asynchronous aggregation,
# not what _NOT_DP_BASES names (with the reason)
_NOT_DP_BASES = {
    "fednova": "its tau_eff / a_i rescales each clipped update, beyond the clipping norm the noise is calibrated to",
    "scaffold": "the wrapper would clip and noise the model update but not the control-variate delta",
    "feddyn": "the cloud model adds the clients' mean state to the mean, beyond the clipped and noised updates",
}
_DP_BASES = tuple(n for n, e in STRATEGIES.items() if not e.wraps and n != "latent-distill"
                  and n not in _NOT_DP_BASES and not issubclass(e.cls, AsynchronousStrategy))


def _parameters(cls: type) -> dict[str, inspect.Parameter]:
    """Keyword parameters of ``cls.__init__``, following ``**kwargs`` into the base classes."""
    params: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        signature = inspect.signature(vars(klass)["__init__"]).parameters
        for name, param in signature.items():
            if name != "self" and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                params.setdefault(name, param)
        if not any(p.kind == p.VAR_KEYWORD for p in signature.values()):
            break
    return params


def strategy_arguments(name: str) -> list[str]:
    """The keyword arguments a user may pass to strategy ``name``."""
    entry = STRATEGIES[name]
    allowed = [p for p in _parameters(entry.cls) if p not in SAMPLING_ARGS and p not in _INTERNAL_ARGS
               and not (entry.run_momentum and p == "momentum")]
    return (["base"] if entry.wraps else []) + allowed


def _unknown_name(name: str) -> StrategyError:
    if name.replace("-", "").replace("_", "") in NOT_OFFERED:
        key = name.replace("-", "").replace("_", "")
        return StrategyError(f"strategy {name!r} is not offered: it {NOT_OFFERED[key]}")
    return StrategyError(f"unknown strategy {name!r}; allowed: {', '.join(STRATEGY_NAMES)}")


def build_strategy(name: str, kwargs: dict[str, Any] | None = None, *, lr: float = 0.01,
                   clients_per_round: int = 1, momentum: float = 0.9) -> Strategy:
    """Instantiate strategy ``name`` with ``kwargs``; errors list what exists.

    ``lr`` (the clients' learning rate) and ``clients_per_round`` are what some strategies'
    defaults derive from (q-FedAvg's client learning rate, the DP wrappers' sample size);
    ``momentum`` (the clients' SGD momentum, ``train.momentum``) is FedNova's ``momentum``.
    """
    if name not in STRATEGIES:
        raise _unknown_name(name)
    entry = STRATEGIES[name]
    kwargs = dict(kwargs or {})
    if entry.run_momentum:
        _check_run_momentum(name, kwargs.pop("momentum", momentum), momentum)
    allowed = strategy_arguments(name)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise StrategyError(
            f"strategy {name!r} has no argument(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(allowed) or '(none)'} (sampling is set by train.fraction_train / "
            "train.clients_per_round)"
        )
    params = _parameters(entry.cls)
    check_arguments(name, kwargs, params, StrategyError)
    arguments = {k: v for k, v in SAMPLING_ARGS.items() if k in params}
    arguments.update(entry.defaults(lr, clients_per_round))
    arguments.update(kwargs)
    if entry.run_momentum:
        arguments["momentum"] = momentum
    if entry.wraps:
        base = arguments.pop("base", "fedavg")
        if base in _NOT_DP_BASES:
            raise StrategyError(f"strategy {name!r}: base = {base!r} cannot be wrapped: {_NOT_DP_BASES[base]}; "
                                f"allowed: {', '.join(_DP_BASES)}")
        if base not in _DP_BASES:
            raise StrategyError(f"strategy {name!r}: base = {base!r} must be one of the synchronous weight-averaging "
                                f"strategies: {', '.join(_DP_BASES)}")
        arguments["strategy"] = build_strategy(base, {}, lr=lr, clients_per_round=clients_per_round,
                                               momentum=momentum)
    missing = [p for p, spec in params.items() if spec.default is inspect.Parameter.empty
               and p not in arguments]
    if missing:
        raise StrategyError(f"strategy {name!r} needs argument(s) {', '.join(missing)} "
                            f"(e.g. --set strategy.kwargs.{missing[0]}=...)")
    try:
        return entry.cls(**arguments)
    except (TypeError, ValueError) as err:
        raise StrategyError(f"strategy {name!r} rejected its arguments {kwargs}: {err}") from err


def _check_run_momentum(name: str, given: Any, momentum: float) -> None:
    """A strategy's ``momentum`` is the clients' (``train.momentum``): a user may only repeat it."""
    if given != momentum or isinstance(given, bool):
        raise StrategyError(f"strategy {name!r}: momentum = {given!r} must equal train.momentum ({momentum!r}): "
                            "it is the clients' SGD momentum, which the strategy reads from the run; set "
                            "train.momentum instead")


def parse_strategy_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name:key=value:key=value"`` -> (name, kwargs); values are read as TOML, else strings."""
    import tomllib

    name, *pairs = [part.strip() for part in spec.split(":")]
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise StrategyError(f"strategy spec {spec!r}: {pair!r} must look like key=value")
        key, raw = (s.strip() for s in pair.split("=", 1))
        try:
            kwargs[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            kwargs[key] = raw
    return name, kwargs
