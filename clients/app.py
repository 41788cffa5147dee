"""The fedsim ``ClientApp``: Flower Message API handlers for train, evaluate and query.

Messages carry the global model as an ``ArrayRecord`` and a ``ConfigRecord`` with
``fedsim.run-dir`` (where the worker finds the run's spec and partition) and
``server-round``. Replies carry the updated ``ArrayRecord`` (train only), a
``MetricRecord`` with ``num-examples``, loss and accuracy, and a ``ConfigRecord``
``client`` naming the partition id, so the server can keep per-client results.
"""

from __future__ import annotations

import time

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from .client import LocalClient
from .distill import distill_round, evaluate_views
from .worker import worker_run

RUN_DIR_KEY = "fedsim.run-dir"
DISTILL_KEY = "fedsim.distill"  # latent-distill messages (fedsim.strategies.distillation)
SEND_OUTPUTS_KEY = "fedsim.send-outputs"
PEER_PREFIX = "peer-"  # ArrayRecords of previous-round client models (crucial hook, committee = peers)
FAIL_KEY = "fedsim.fail-clients"  # fault injection: partition ids that raise (simulation.fail_clients)

DP_ADAPTIVE_KEY = "fedsim.dp-adaptive"  # set by fedsim.strategies' dp-adaptive-client


def dp_clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Apply Flower's client-side DP clipping mod when the strategy asks for it.

    The client-side DP wrappers (``dp-fixed-client``, ``dp-adaptive-client``) send a clipping
    norm in the train config; other strategies do not, and their messages pass through.
    """
    config = msg.content.config_records.get("config") if msg.has_content() else None
    if msg.metadata.message_type != MessageType.TRAIN or config is None or KEY_CLIPPING_NORM not in config:
        return call_next(msg, context)
    mod = adaptiveclipping_mod if config.get(DP_ADAPTIVE_KEY, False) else fixedclipping_mod
    return mod(msg, context, call_next)


client_app = ClientApp(mods=[dp_clipping_mod])


def _client_for(msg: Message, context: Context) -> tuple[LocalClient, ConfigRecord]:
    config = msg.content["config"]
    run = worker_run(str(config[RUN_DIR_KEY]))
    partition_id = int(context.node_config["partition-id"])
    failing = config.get(FAIL_KEY, [])
    if isinstance(failing, list) and partition_id in failing:
        raise RuntimeError(f"client {partition_id} failed on purpose ({FAIL_KEY})")
    return LocalClient(partition_id, run), config


def _peers(msg: Message) -> list[tuple[int, dict]]:
    """Previous-round client models the server attached for a ``crucial`` committee (``peer-<id>``)."""
    return [(int(key.split("-", 1)[1]), record.to_torch_state_dict())
            for key, record in msg.content.array_records.items() if key.startswith(PEER_PREFIX)]


def _load_global(client: LocalClient, msg: Message):
    model = client.run.model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict(), strict=True)
    return model


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Load the global weights, train locally, reply with the new weights and metrics."""
    started = time.perf_counter()
    client, config = _client_for(msg, context)
    if config.get(DISTILL_KEY, False):
        values, outputs = distill_round(client, msg.content["arrays"], int(config["server-round"]),
                                        bool(config.get(SEND_OUTPUTS_KEY, True)))
        values["client-seconds"] = time.perf_counter() - started
        content = RecordDict({"arrays": outputs, "metrics": MetricRecord(values),
                              "client": ConfigRecord({"partition-id": client.client_id})})
        return Message(content=content, reply_to=msg)
    model = _load_global(client, msg)
    stats = client.fit(model, int(config["server-round"]), float(config.get("proximal-mu", 0.0)),
                       peers=_peers(msg))
    metrics = MetricRecord({
        "num-examples": stats.num_examples,
        "train-loss": stats.loss,
        "train-accuracy": stats.accuracy,
        "train-steps": stats.steps,
        "client-seconds": time.perf_counter() - started,
        **stats.hook_metrics,
    })
    content = RecordDict({
        "arrays": ArrayRecord(model.state_dict()),
        "metrics": metrics,
        "client": ConfigRecord({"partition-id": client.client_id}),
    })
    return Message(content=content, reply_to=msg)


@client_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global weights on the client's held-out split."""
    client, config = _client_for(msg, context)
    if config.get(DISTILL_KEY, False):
        content = RecordDict({"metrics": MetricRecord(evaluate_views(client)),
                              "client": ConfigRecord({"partition-id": client.client_id})})
        return Message(content=content, reply_to=msg)
    model = _load_global(client, msg)
    stats = client.evaluate(model)
    metrics = MetricRecord({
        "num-examples": stats.num_examples,
        "eval-loss": stats.loss,
        "eval-accuracy": stats.accuracy,
    })
    content = RecordDict({"metrics": metrics, "client": ConfigRecord({"partition-id": client.client_id})})
    return Message(content=content, reply_to=msg)


@client_app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node hosts (for seeded sampling by partition id)."""
    record = ConfigRecord({"partition-id": int(context.node_config["partition-id"])})
    return Message(content=RecordDict({"client": record}), reply_to=msg)
