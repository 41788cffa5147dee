"""What a Flower SuperNode hosts, and, for a node with its own data, where it keeps the run.

A node is told what it hosts by its ``node_config`` (``flower-supernode --node-config``):

* without ``data-dir`` the node reads the server's run directory (the same machine, or a shared
  file system): it can run any client, so the cohort executor balances the round's clients
  over such nodes. Flower's simulation runtime starts its nodes this way.
* with ``data-dir`` the node has **its own data**: it hosts the clients of its shard,
  ``partition-id`` of ``num-partitions`` (client ``c`` belongs to shard
  ``c % num-partitions``; with as many clients as nodes, node ``k`` is client ``k``, as in
  Flower's examples). At the start of a run the server sends it the run's small files
  (``spec.json``, ``config.toml``, ``partition.npz``, ``transfer.npz``); the node prepares
  the run's dataset itself into ``data-dir`` -- generated (synthetic), downloaded or read
  the way ``fedsim run`` would, or from ``data-file``, its local ``.npz`` copy of the dataset
  (``x_train``, ``y_train``, ``x_test``, ``y_test``) -- and refuses if it differs from the
  server's (labels, shapes, channel statistics). The node's copy of the run lives in
  ``data-dir/runs/<run>-<hash>/``, with the clients' persistent state (latent-distill).

A Flower SuperNode may start a fresh ClientApp process for every message, so nothing here
relies on process memory: the node config comes with every message (the process owner hosts
each message as its node says, :meth:`fedsim.clients.process.WorkerProcess.hosting_node`), and
the local copy of a run is found again from the server's run directory
(:meth:`NodeHosting.local_run_dir`).
"""

from __future__ import annotations

import hashlib
import tomllib
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from fedsim.core.spec import CONFIG_FILE, NODE_RUN_FILES, SPEC_FILE, TRANSFER_FILE, RunSpec, TransferIndex

PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
DATA_DIR = "data-dir"
DATA_FILE = "data-file"


class NodeConfigError(ValueError):
    """The node's ``--node-config`` cannot host a fedsim run (the message names the key)."""


@dataclass(frozen=True)
class NodeHosting:
    """What one node hosts: a shard of the clients with its own data, or any client."""

    shard: int | None = None  # partition-id
    shards: int | None = None  # num-partitions
    data_dir: Path | None = None  # set: the node has its own data
    data_file: Path | None = None  # the node's .npz copy of the dataset (own data only)

    @property
    def own_data(self) -> bool:
        return self.data_dir is not None

    def local_run_dir(self, server_run_dir: str) -> str:
        """The folder this node reads the run at ``server_run_dir`` from: the server's, or its own copy."""
        if not self.own_data:
            return server_run_dir
        folder = mirror_folder(self.data_dir, server_run_dir)  # type: ignore[arg-type]
        if not (folder / SPEC_FILE).is_file():
            raise RuntimeError(f"this node has no copy of the run {server_run_dir} (expected in {folder}): the server "
                               "sends it when the node joins; was the node's data-dir changed or removed?")
        return str(folder)

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, object]) -> "NodeHosting":
        """Read and check the node config; raise :class:`NodeConfigError` naming a bad key."""
        shard = node_config.get(PARTITION_ID)
        shards = node_config.get(NUM_PARTITIONS)
        data_dir = str(node_config.get(DATA_DIR, "") or "")
        data_file = str(node_config.get(DATA_FILE, "") or "")
        if data_file and not data_dir:
            raise NodeConfigError(f"{DATA_FILE} = {data_file!r} needs {DATA_DIR} too: the folder where this "
                                  "node keeps its dataset cache and the runs' files")
        if data_dir:
            for key, value in ((PARTITION_ID, shard), (NUM_PARTITIONS, shards)):
                if not isinstance(value, int) or isinstance(value, bool):
                    raise NodeConfigError(f"{key} = {value!r}: a node with its own data ({DATA_DIR}) needs "
                                          f"integers {PARTITION_ID} and {NUM_PARTITIONS}, e.g. --node-config "
                                          f"\"{PARTITION_ID}=0 {NUM_PARTITIONS}=3 {DATA_DIR}='/data/node0'\"")
            if not shards >= 1 or not 0 <= shard < shards:  # type: ignore[operator]
                raise NodeConfigError(f"{PARTITION_ID} = {shard} with {NUM_PARTITIONS} = {shards}: need "
                                      f"0 <= {PARTITION_ID} < {NUM_PARTITIONS}")
            if data_file and not Path(data_file).expanduser().is_file():
                raise NodeConfigError(f"{DATA_FILE} = {data_file!r}: no such file on this node")
        return cls(shard if isinstance(shard, int) else None, shards if isinstance(shards, int) else None,
                   Path(data_dir).expanduser().resolve() if data_dir else None,
                   Path(data_file).expanduser().resolve() if data_file else None)


def mirror_folder(data_dir: Path, server_run_dir: str) -> Path:
    """Where a node with its own data keeps its copy of the run at ``server_run_dir``."""
    digest = hashlib.sha256(server_run_dir.encode()).hexdigest()[:12]
    return data_dir / "runs" / f"{Path(server_run_dir).name.lstrip('.')}-{digest}"  # a staging folder's name starts with "."


def run_files(run_dir: Path) -> dict[str, bytes]:
    """What the server sends a node with its own data: the run's files of :data:`fedsim.core.spec.NODE_RUN_FILES`."""
    return {name: (run_dir / name).read_bytes() for name in NODE_RUN_FILES if (run_dir / name).is_file()}


def install_run(hosting: NodeHosting, server_run_dir: str, files: Mapping[str, bytes], digest: str) -> Path:
    """Make the node's own copy of a run from the server's files and the node's own dataset.

    The dataset is materialised into ``data-dir/cache`` from the run's ``[data]`` settings
    (or ``data-file``) and must have ``digest`` (:func:`fedsim.datasets.dataset_digest`), the
    server's; the run's spec is rewritten to point at the local copies. Written to a temporary
    folder and renamed, so a half-installed run is never read.
    """
    from fedsim.datasets import DataSettings, dataset_digest, materialize

    assert hosting.data_dir is not None, "only a node with its own data installs runs"
    target = mirror_folder(hosting.data_dir, server_run_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".installing-", dir=target.parent))
    try:
        for name, content in files.items():
            (staging / name).write_bytes(content)
        settings = DataSettings(**tomllib.loads((staging / CONFIG_FILE).read_text()).get("data", {}))  # the run's [data]
        data = replace(settings, data_dir=str(hosting.data_dir), cache_dir=str(hosting.data_dir / "cache"))
        if hosting.data_file is not None:
            data = replace(data, dataset="npz", path=str(hosting.data_file))
        dataset = materialize(data)
        if dataset_digest(dataset) != digest:
            raise RuntimeError(
                f"this node's copy of the dataset ({hosting.data_file or settings.dataset}, prepared in "
                f"{dataset.folder}) differs from the server's: another file, class subset or version; give the "
                f"node the server's dataset ({DATA_FILE}) so that the run's partition indexes the same samples")
        if (staging / TRANSFER_FILE).is_file() and TransferIndex.load(staging).source:
            raise RuntimeError("latent-distill with a transfer set from another dataset cannot run on nodes with "
                               "their own data: use a hold-out of the training set (the default)")
        spec = RunSpec.load(staging)
        replace(spec, run_dir=str(target), dataset_folder=str(dataset.folder)).save(staging)
        if (target / SPEC_FILE).is_file() and (target / SPEC_FILE).read_bytes() == (staging / SPEC_FILE).read_bytes():
            shutil.rmtree(staging)  # the node rejoined: keep its copy, with the clients' state
            return target
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
