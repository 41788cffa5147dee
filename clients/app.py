"""The fedsim ``ClientApp``: Flower Message API handlers for train, evaluate and query.

Two ways to host clients on a Flower node:

* **one client per node** (``simulation.executor = "flower"``): the node's ``partition-id`` is
  the client id; ``train`` and ``evaluate`` hand the message to :mod:`fedsim.clients.handler`,
  and ``query`` tells the server which partition the node hosts;
* **a cohort per node** (``"cohort"``): a ``train.cohort`` / ``evaluate.cohort`` message carries
  several clients' tasks (:func:`fedsim.protocol.pack_cohort`); the node runs them one after
  another through this same ClientApp (:class:`fedsim.clients.runner.ClientRunner`, so mods
  apply per client) and replies once with every client's result.

Messages and replies follow :mod:`fedsim.protocol`. Flower's client-side DP clipping mods are
applied when a DP strategy asks for them.
"""

from __future__ import annotations

import time

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fedsim.protocol import (
    CLIENT,
    COHORT,
    COHORT_ACTION,
    CONFIG,
    DP_ADAPTIVE,
    PARTITION_ID,
    pack_cohort_replies,
    unpack_cohort,
)

from .handler import handle_evaluate, handle_train
from .runner import ClientRunner, ensure_task_identity


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
    """Train this node's client from the received global weights."""
    return handle_train(msg, int(context.node_config[PARTITION_ID]))


@client_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate on this node's client's held-out split."""
    return handle_evaluate(msg, int(context.node_config[PARTITION_ID]))


@client_app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node hosts (the executor maps client ids to nodes)."""
    record = ConfigRecord({PARTITION_ID: int(context.node_config[PARTITION_ID])})
    return Message(content=RecordDict({CLIENT: record}), reply_to=msg)


_RUNNERS: dict[int, ClientRunner] = {}  # per process, by population size: the clients' contexts


def run_cohort(msg: Message, context: Context) -> Message:  # noqa: ARG001 - Flower's signature
    """Run every client task the cohort message carries; reply once with all their results."""
    started = time.perf_counter()
    ensure_task_identity(msg.metadata.run_id)
    num_clients = int(msg.content[COHORT]["num-clients"])
    runner = _RUNNERS.setdefault(num_clients, ClientRunner(client_app, num_clients))
    replies = runner.run(unpack_cohort(msg))
    stream_key = str(msg.content[COHORT].get("stream-key", ""))
    return Message(content=pack_cohort_replies(replies, time.perf_counter() - started, stream_key), reply_to=msg)


client_app.train(COHORT_ACTION)(run_cohort)
client_app.evaluate(COHORT_ACTION)(run_cohort)
