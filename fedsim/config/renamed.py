"""Config keys that were renamed, and their new names.

Configs written for an earlier fedsim (and run directories' ``config.toml`` files, which a
resume reads) still load: every old key is set under its new name, with one
:class:`RenamedKeyWarning` line naming the new key. The shipped configs, notebooks and docs use
the new names.

What moved, and why:

* ``[simulation]`` mixed four concerns; it became ``[runtime]`` (Ray resources, device,
  start-up), ``[executor]`` (which executor, workers, time limits, streaming), ``[engine]``
  (sequential or vectorized training) and ``[faults]`` (fault injection);
  ``min_success_fraction`` is a rule of the rounds and went to ``[train]``.
* ``[time]`` was a tagged union flattened into 21 keys; it became the tagged tables
  ``[time.devices]`` and ``[time.availability]`` (``kind`` plus only that kind's keys) and
  ``[time.policy]``.
* ``[distill]`` belongs to one strategy; it became ``[latent_distill]``, the section that
  method registers.
"""

from __future__ import annotations

RENAMED: dict[str, str] = {
    # [simulation] -> [runtime], [executor], [engine], [faults], [train]
    "simulation.num_cpus_per_client": "runtime.num_cpus_per_client",
    "simulation.num_gpus_per_client": "runtime.num_gpus_per_client",
    "simulation.device": "runtime.device",
    "simulation.ray_num_cpus": "runtime.ray_num_cpus",
    "simulation.ray_address": "runtime.ray_address",
    "simulation.node_wait": "runtime.node_wait",
    "simulation.executor": "executor.kind",
    "simulation.workers": "executor.workers",
    "simulation.round_timeout": "executor.round_timeout",
    "simulation.client_timeout": "executor.client_timeout",
    "simulation.streaming": "executor.streaming",
    "simulation.min_success_fraction": "train.min_success_fraction",
    "simulation.fail_clients": "faults.fail_clients",
    "simulation.engine": "engine.kind",
    "simulation.lockstep_clients": "engine.lockstep_clients",
    "simulation.lockstep_memory": "engine.lockstep_memory",
    "simulation.compile": "engine.compile",
    # [time] -> [time.devices], [time.availability], [time.policy]
    "time.devices": "time.devices.kind",
    "time.seconds_per_sample": "time.devices.seconds_per_sample",
    "time.download_mbps": "time.devices.download_mbps",
    "time.upload_mbps": "time.devices.upload_mbps",
    "time.latency": "time.devices.latency",
    "time.compute_sigma": "time.devices.compute_sigma",
    "time.network_sigma": "time.devices.network_sigma",
    "time.round_jitter": "time.devices.round_jitter",
    "time.tiers": "time.devices.tiers",
    "time.tier_weights": "time.devices.weights",
    "time.devices_file": "time.devices.path",
    "time.availability": "time.availability.kind",
    "time.availability_p": "time.availability.p",
    "time.daily_on_hours": "time.availability.on_hours",
    "time.daily_period_hours": "time.availability.period_hours",
    "time.trace_file": "time.availability.path",
    "time.trace_period": "time.availability.period",
    "time.deadline": "time.policy.deadline",
    "time.over_selection": "time.policy.over_selection",
    "time.train_dropped": "time.policy.train_dropped",
    "time.concurrency": "time.policy.concurrency",
    # [distill] -> [latent_distill]
    **{f"distill.{key}": f"latent_distill.{key}" for key in (
        "transfer_size", "transfer_classes", "transfer_dataset", "transfer_path", "teacher", "teacher_epochs",
        "lambda_ce", "lambda_kd", "lambda_rep", "temperature", "tau", "digest_epochs", "digest_batch_size",
        "digest_lr", "tpriv_size")},
}
"""Old dotted key -> new dotted key."""

KIND_SHORTHANDS = ("time.devices", "time.availability")
"""Old keys that named a tagged table's kind: ``time.devices = "tiers"`` is ``time.devices.kind = "tiers"``."""


class RenamedKeyWarning(FutureWarning):
    """A config uses a key's old name; the message names the new one."""
