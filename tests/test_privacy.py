"""Privacy accounting of the DP strategies (fedsim.methods.privacy, docs/privacy.md): epsilon per round."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from opacus.accountants import RDPAccountant

from fedsim.config import ConfigError
from fedsim.runs.experiment import resume, run
from fedsim.ops.interrupt import RunInterrupted
from fedsim.methods.privacy.accounting import PrivacyAccounting, adaptive_noise_multiplier, epsilon, resolve_delta
from interrupting import StopAfter

N, K = 10, 4  # small_config's clients; clients sampled per round
DP_FIXED = {"strategy.name": "dp-fixed-server", "strategy.kwargs.noise_multiplier": 1.0,
            "strategy.kwargs.clipping_norm": 0.01, "strategy.kwargs.base": "uniform",  # small noise: no divergence
            "train.clients_per_round": K, "train.rounds": 3, "evaluation.federated_every": 0}


def direct_epsilons(z: float, q: float, rounds: int, delta: float) -> list[float]:
    accountant, out = RDPAccountant(), []
    for _ in range(rounds):
        accountant.step(noise_multiplier=z, sample_rate=q)
        out.append(accountant.get_epsilon(delta))
    return out


def trained(rounds: pd.DataFrame) -> pd.DataFrame:
    return rounds[rounds["round"] > 0]


@pytest.mark.slow  # keeps the fast set under a minute
def test_fixed_clipping_epsilon_per_round_equals_opacus(small_config) -> None:
    result = run(small_config(**DP_FIXED, **{"output.figures": True}), progress=False)
    eps = trained(result.rounds)["dp_epsilon"].tolist()
    delta = min(1e-5, N ** -1.1)
    assert eps == pytest.approx(direct_epsilons(1.0, K / N, 3, delta), rel=0, abs=1e-9)
    assert all(b > a > 0 for a, b in zip(eps, eps[1:]))
    s = result.summary
    assert s["dp_epsilon"] == pytest.approx(eps[-1], abs=1e-12)
    assert (s["dp_delta"], s["dp_accountant"], s["dp_noise_multiplier"], s["dp_sampling_rate"]) == \
        (delta, "rdp", 1.0, K / N)
    assert s["dp_clipping"] == "server-side fixed" and s["dp_rounds_accounted"] == 3 and "dp_notes" not in s
    assert json.loads((result.path / "summary.json").read_text())["dp_epsilon"] == s["dp_epsilon"]
    assert (result.path / "figures" / "privacy.png").stat().st_size > 0


@pytest.mark.slow  # keeps the fast set under a minute
def test_non_dp_run_has_no_epsilon_and_no_figure(small_config) -> None:
    result = run(small_config(**{"train.rounds": 2, "evaluation.federated_every": 0, "output.figures": True}),
                 progress=False)
    assert "dp_epsilon" in result.rounds and result.rounds["dp_epsilon"].isna().all()
    assert not any(k.startswith("dp_") for k in result.summary)
    assert (result.path / "figures" / "accuracy.png").exists()
    assert not (result.path / "figures" / "privacy.png").exists()


@pytest.mark.slow  # keeps the fast set under a minute
def test_adaptive_clipping_accounts_update_and_count_noise(small_config) -> None:
    """Andrew et al.: update noise z_update and count noise sigma_b act as one Gaussian mechanism
    with z = (z_update^-2 + (2 sigma_b)^-2)^-1/2, which is the configured noise_multiplier."""
    settings = {**DP_FIXED, "strategy.name": "dp-adaptive-client", "strategy.kwargs.clipped_count_stddev": 1.0,
                "strategy.kwargs.initial_clipping_norm": 0.01, "privacy.delta": 1e-3, "train.rounds": 2}
    del settings["strategy.kwargs.clipping_norm"]
    result = run(small_config(**settings), progress=False)
    s = result.summary
    z_update = (1.0 ** -2 - 2.0 ** -2) ** -0.5  # what Flower adds to the update
    assert s["dp_update_noise_multiplier"] == pytest.approx(z_update, rel=1e-12)
    assert s["dp_clipped_count_stddev"] == 1.0 and s["dp_clipping"] == "client-side adaptive"
    z = adaptive_noise_multiplier(z_update, 1.0)
    assert z == pytest.approx(1.0, rel=1e-12) and s["dp_noise_multiplier"] == z
    eps = trained(result.rounds)["dp_epsilon"].tolist()
    assert eps == pytest.approx(direct_epsilons(z, K / N, 2, 1e-3), rel=0, abs=1e-9)


@pytest.mark.slow  # keeps the fast set under a minute
def test_resumed_run_reports_the_same_epsilons(small_config) -> None:
    settings = {**DP_FIXED, "train.rounds": 3}
    reference = run(small_config(**settings, **{"output.name": "reference"}), progress=False)
    config = small_config(**settings, **{"output.name": "resumed"})
    with pytest.raises(RunInterrupted):
        run(config, progress=False, extensions=[StopAfter(1)])
    kept = Path(config.output.dir) / "resumed.interrupted"
    result = resume(kept, progress=False, extensions=[StopAfter(99)])
    assert result.rounds["dp_epsilon"].tolist()[1:] == reference.rounds["dp_epsilon"].tolist()[1:]
    assert result.summary["dp_epsilon"] == reference.summary["dp_epsilon"]
    assert result.summary["dp_rounds_accounted"] == 3


def test_accounting_unit_rules() -> None:
    """Rounds with fewer updates have less noise relative to the sensitivity; no release, no step."""
    acc = PrivacyAccounting(noise_multiplier=1.0, num_sampled_clients=4, population=10, clients_per_round=4,
                            delta=1e-5)
    assert acc.step_noise(4) == 1.0 and acc.step_noise(2) == 0.5
    assert acc.epsilon() == 0.0
    assert math.isinf(epsilon([(0.0, 0.4, 1)], 1e-5))
    assert resolve_delta(0.0, 10) == 1e-5 and resolve_delta(0.0, 10**6) == pytest.approx(1e6 ** -1.1)
    assert resolve_delta(1e-3, 10) == 1e-3


def test_prv_accountant_is_tighter_than_rdp() -> None:
    history = [(1.0, 0.1, 100)]
    rdp, prv = epsilon(history, 1e-5, "rdp"), epsilon(history, 1e-5, "prv")
    assert rdp == pytest.approx(7.899, abs=1e-3) and 0 < prv < rdp


@pytest.mark.parametrize(("key", "value", "message"), [
    ("privacy.accountant", "gdp", "privacy.accountant = 'gdp': allowed: rdp, prv"),
    ("privacy.delta", 1.5, "privacy.delta = 1.5: must be in [0, 1)"),
    ("privacy.delta", -0.1, "privacy.delta = -0.1: must be in [0, 1)"),
    ("privacy.delta", 0.2, "privacy.delta = 0.2: must be < 1 / partition.num_clients = 0.1"),
])
def test_bad_privacy_config_is_refused(small_config, key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        small_config(**{key: value})
    assert message in str(err.value)


def test_unknown_privacy_key_is_refused(small_config) -> None:
    with pytest.raises(ConfigError) as err:
        small_config(**{"privacy.epsilon": 3.0})
    assert "[privacy] has the keys accountant, delta" in str(err.value)


@pytest.mark.slow  # keeps the fast set under a minute
def test_weighted_base_is_noted(small_config) -> None:
    settings = {**DP_FIXED, "train.rounds": 1}
    del settings["strategy.kwargs.base"]
    result = run(small_config(**settings), progress=False)
    assert any("equal-weight mean" in note for note in result.summary["dp_notes"])
