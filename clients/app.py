"""The fedsim ``ClientApp``: Flower Message API handlers for train, evaluate and query.

Two ways to host clients on a Flower node:

* **one client per node** (``executor.kind = "flower"``): the node's ``partition-id`` is
  the client id; ``train`` and ``evaluate`` hand the message to :mod:`fedsim.clients.handler`,
  and ``query`` tells the server which partition the node hosts;
* **a cohort per node** (``"cohort"``): the node first answers a join query (what it hosts:
  any client, reading the server's run directory, or its shard with its own data,
  :mod:`fedsim.clients.node`); then a ``train.cohort`` / ``evaluate.cohort`` message carries
  several clients' tasks (:func:`fedsim.core.protocol.pack_cohort`); the node runs them one after
  another through this same ClientApp (:class:`fedsim.clients.runner.ClientRunner`, so mods
  apply per client) -- or, for training tasks no mod acts on, straight through the handler,
  keeping their weights stacked -- and replies once with every client's result (the stacks
  travel as one array per dtype).

Messages and replies follow :mod:`fedsim.core.protocol`. Flower's client-side DP clipping mods are
applied when a DP strategy asks for them.
"""

from __future__ import annotations

import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fedsim.core.protocol import (
    CLIENT,
    COHORT,
    COHORT_ACTION,
    CONFIG,
    DP_ADAPTIVE,
    PARTITION_ID,
    join_answer,
    pack_cohort_replies,
    read_join_query,
    unpack_cohort,
)
from fedsim.core.spec import SPEC_FILE

from .handler import handle_evaluate, handle_train
from .node import install_run
from .process import worker_process
from .runner import ClientRunner, ensure_task_identity, lockstep_outcome


def dp_clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Apply Flower's client-side DP clipping mod when the strategy asks for it.

    The client-side DP wrappers (``dp-fixed-client``, ``dp-adaptive-client``) send a clipping
    norm in the train config; other strategies do not, and their messages pass through.
    """
    config = msg.content.config_records.get(CONFIG) if msg.has_content() else None
    if msg.metadata.message_type != MessageType.TRAIN or config is None or KEY_CLIPPING_NORM not in config:
        return call_next(msg, context)
    mod = adaptiveclipping_mod if config.get(DP_ADAPTIVE, False) else fixedclipping_mod
    return mod(msg, context, call_next)


client_app = ClientApp(mods=[dp_clipping_mod])


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Train this node's client from the received global weights.

    In a cohort, the runner's context brings the vectorized engine's outcome for this task, if any.
    """
    return handle_train(msg, int(context.node_config[PARTITION_ID]), lockstep_outcome(context))


@client_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate on this node's client's held-out split.

    In a cohort, the runner's context brings the vectorized engine's scores for this task, if any.
    """
    return handle_evaluate(msg, int(context.node_config[PARTITION_ID]), lockstep_outcome(context))


@client_app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server what this node hosts.

    A join query (the cohort executor's, once per run and node) is answered with the node's
    shard and whether it has its own data, after installing the run's files on such a node
    (:mod:`fedsim.clients.node`); a problem (a bad node config, a dataset that differs, a run
    directory a shared-storage node cannot read) is the answer's ``error``, which the server
    reports. Any other query is the one-client-per-node executor's: the node's partition id.
    """
    join = read_join_query(msg)
    if join is None:
        record = ConfigRecord({PARTITION_ID: int(context.node_config[PARTITION_ID])})
        return Message(content=RecordDict({CLIENT: record}), reply_to=msg)
    run_dir, files, digest = join
    shard = shards = None
    try:
        with worker_process().hosting_node(context.node_config) as node:
            shard, shards = node.shard, node.shards
            if node.own_data:
                install_run(node, run_dir, files, digest)
            elif not (Path(run_dir) / SPEC_FILE).is_file():
                raise RuntimeError(
                    f"this node cannot read the run directory {run_dir}: start it on the server's machine or with "
                    f"the run folder shared, or give it its own data (--node-config \"{PARTITION_ID}=K "
                    "num-partitions=N data-dir='/path'\")")
            answer = join_answer(node.own_data, shard, shards)
    except Exception as error:  # noqa: BLE001 - reported to the server, which stops the run with it
        answer = join_answer(False, shard, shards, f"{type(error).__name__}: {error}")
    return Message(content=answer, reply_to=msg)


def run_cohort(msg: Message, context: Context) -> Message:
    """Run every client task the cohort message carries; reply once with all their results.

    The process's runner for the cohort's population and thread count keeps each client's
    context across rounds (:meth:`fedsim.clients.process.WorkerProcess.client_runner`).
    """
    started = time.perf_counter()
    ensure_task_identity(msg.metadata.run_id)
    num_clients = int(msg.content[COHORT]["num-clients"])
    threads = int(msg.content[COHORT].get("threads", 0)) or None
    process = worker_process()
    runner = process.client_runner(num_clients, threads,
                                   lambda: ClientRunner(client_app, num_clients, threads, direct=True))
    with process.hosting_node(context.node_config):  # a node with its own data reads its copy of the run
        replies = runner.run(unpack_cohort(msg))
    stream_key = str(msg.content[COHORT].get("stream-key", ""))
    return Message(content=pack_cohort_replies(replies, time.perf_counter() - started, stream_key), reply_to=msg)


client_app.train(COHORT_ACTION)(run_cohort)
client_app.evaluate(COHORT_ACTION)(run_cohort)
