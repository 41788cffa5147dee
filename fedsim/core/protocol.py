"""The wire protocol between fedsim's server side and its clients: keys, tasks, replies, packing.

A leaf module (it imports Flower's record types and :mod:`fedsim.core.stack` only), so that
``fedsim.clients`` and ``fedsim.strategies`` can both depend on it without depending on each
other. Everything a message carries is named here once:

* record names in a message's ``RecordDict``: ``arrays`` (an ``ArrayRecord``: global weights
  down, client weights or outputs up), ``config`` (a ``ConfigRecord`` the strategy builds),
  ``metrics`` (the client's ``MetricRecord``) and ``client`` (a ``ConfigRecord`` naming the
  partition id that answered);
* the ``config`` keys fedsim adds to every strategy's configuration (``fedsim.*``);
* the metric keys clients report, and the ``hook.<name>.<metric>`` convention for hook
  statistics;
* :class:`ClientTask` / :class:`ClientReply`: what the round loop hands an executor and gets
  back (one per sampled client; a failure is a reply whose message carries an ``Error``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum

from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from fedsim.core.stack import StackedUpdate, UpdateStack, stack_of_records, weighted_mean

# ----------------------------------------------------------------------- record names
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
CLIENT = "client"

# ----------------------------------------------------------------------- config keys
SERVER_ROUND = "server-round"  # set by every Flower strategy's configure_* methods
PROXIMAL_MU = "proximal-mu"  # set by Flower's FedProx; the client adds the proximal term
MOON_MU = "fedsim.moon-mu"  # set by MOON: the weight of the client's model-contrastive term
MOON_TEMPERATURE = "fedsim.moon-temperature"  # set by MOON: the contrastive term's temperature
RUN_DIR = "fedsim.run-dir"  # where a worker finds the run's spec and partition
DISTILL = "fedsim.distill"  # the message asks for a distillation round (latent-distill)
SEND_OUTPUTS = "fedsim.send-outputs"  # distillation: reply with transfer-set outputs
DP_ADAPTIVE = "fedsim.dp-adaptive"  # client-side adaptive clipping instead of fixed clipping
PARTITION_ID = "partition-id"  # in the reply's ``client`` record (and Flower's node_config)
CLIENT_TIMEOUT = "fedsim.client-timeout"  # seconds one client may take on a worker (0 = no limit)
PEER_PREFIX = "peer-"  # ArrayRecords ``peer-<client id>``: other clients' models attached to a task
CONTROL = "control"  # SCAFFOLD: the server control variate c, an ArrayRecord sent with a train task
CONTROL_DELTA = "control-delta"  # SCAFFOLD: a client's delta c_i, an ArrayRecord (or named stack) in its reply
FEDDYN_ALPHA = "fedsim.feddyn-alpha"  # set by FedDyn: the regularisation weight alpha (clients scale it to alpha_k)
FEDDYN_MAX_GRAD_NORM = "fedsim.feddyn-max-grad-norm"  # set by FedDyn: the clients' gradient clipping norm (0: off)

# ----------------------------------------------------------------------- metric keys
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
TRAIN_ACCURACY = "train-accuracy"
TRAIN_STEPS = "train-steps"
EVAL_LOSS = "eval-loss"
EVAL_ACCURACY = "eval-accuracy"
CLIENT_SECONDS = "client-seconds"
DIGEST_LOSS = "digest-loss"  # distillation: the digest step's loss
TPRIV_ACCURACY = "tpriv-accuracy"  # distillation: own model on a test subset with the client's class mix
TUNI_ACCURACY = "tuni-accuracy"  # distillation: own model on the whole test set
HOOK_PREFIX = "hook."
ENGINE = "fedsim.engine"  # train: how the client was trained, a TrainingEngine code
COMPILE_SECONDS = "compile-seconds"  # train (vectorized + compile): this client's share of compile time


class TrainingEngine(IntEnum):
    """The codes of the ``fedsim.engine`` metric: how a client was trained, defined once.

    Clients report one (:mod:`fedsim.clients.handler`, the vectorized engine's planner
    :mod:`fedsim.clients.lockstep.planner`); the server labels it in ``clients.csv``
    (:data:`ENGINE_LABELS`) and counts the vectorized ones in ``rounds.csv``
    (:class:`fedsim.clients.lockstep.columns.EngineColumns`). Every code but ``VECTORIZED`` means
    the sequential engine; the ``FALLBACK_*`` codes say why a client of a vectorized run used it.
    """

    SEQUENTIAL = 0
    VECTORIZED = 1
    FALLBACK_DISTILL = 2
    FALLBACK_ALONE = 3
    FALLBACK_HOOK = 4
    FALLBACK_RAISED = 5
    FALLBACK_SLOW = 6
    FALLBACK_CONTRASTIVE = 7


ENGINE_LABELS: dict[int, str] = {
    TrainingEngine.SEQUENTIAL: "sequential",
    TrainingEngine.VECTORIZED: "vectorized",
    TrainingEngine.FALLBACK_DISTILL: "sequential: latent-distill trains in several phases",
    TrainingEngine.FALLBACK_ALONE: "sequential: no other client of its architecture and recipe on its worker this round",
    TrainingEngine.FALLBACK_HOOK: "sequential: a hook opts out of lockstep (vectorizable = False)",
    TrainingEngine.FALLBACK_RAISED: "sequential: its lockstep chunk raised (see the worker's log)",
    TrainingEngine.FALLBACK_SLOW: "sequential: its lockstep chunk exceeded executor.client_timeout x its size",
    TrainingEngine.FALLBACK_CONTRASTIVE: "sequential: MOON's contrastive term needs three models per step",
}
"""What ``clients.csv``'s ``engine`` column says for each :class:`TrainingEngine` code: the training engine,
or why a client of a vectorized run fell back to the sequential engine."""

# ----------------------------------------------------------------------- error codes
CLIENT_RAISED = 2  # Flower's ErrorCode.CLIENT_APP_RAISED_EXCEPTION
NO_REPLY = 100  # fedsim: the client did not answer before the round's timeout
INVALID_UPDATE = 101  # fedsim: the client's update has NaN/Inf values or the wrong shapes


@dataclass
class ClientTask:
    """One sampled client's work for a round: the client id and the message a strategy built."""

    client_id: int
    message: Message


class ClientReply:
    """What came back for one task: the client's reply message, or one carrying an ``Error``.

    A reply is built either from a ``message`` (what a ClientApp or a Flower node returned) or,
    on a worker's fast path, from the reply's ``content`` and the task it answers
    (``reply_to``): the Flower ``Message`` around that content is then made only when someone
    asks for :attr:`message` (a strategy on the per-client path, Flower's evaluate aggregation),
    so a round whose strategy aggregates the stack builds none per client. Such a reply is
    always a success (a failure is an ``Error`` message, :func:`failed_reply`).

    ``sent_bytes`` is what the client uploaded when its arrays did not travel on their own (a
    streaming cohort worker summed them); None means: count the message's arrays. ``update``
    is the client's arrays as a row of its worker's stack (not in the message). ``extras``: the
    other per-client arrays a method sends (SCAFFOLD's :data:`CONTROL_DELTA`) as rows of named
    stacks, by record name; they become ArrayRecords of those names in :meth:`materialized`.
    """

    __slots__ = ("client_id", "sent_bytes", "update", "extras", "_message", "_content", "_reply_to")

    def __init__(self, client_id: int, message: Message | None = None, sent_bytes: int | None = None,
                 update: StackedUpdate | None = None, *, content: RecordDict | None = None,
                 reply_to: Message | None = None, extras: dict[str, StackedUpdate] | None = None) -> None:
        if (message is None) == (content is None):
            raise ValueError("a ClientReply needs a message or a content (with the task it replies to), not both")
        if content is not None and reply_to is None:
            raise ValueError("a ClientReply built from a content needs the task message it replies to")
        self.client_id = client_id
        self.sent_bytes = sent_bytes
        self.update = update
        self.extras: dict[str, StackedUpdate] = dict(extras or {})
        self._message = message
        self._content = content
        self._reply_to = reply_to

    def __repr__(self) -> str:
        state = "ok" if self.ok else f"error {self.error!r}"
        return f"ClientReply(client_id={self.client_id}, {state}, stacked={self.update is not None})"

    def with_update(self, update: StackedUpdate) -> ClientReply:
        """This reply with another stacked row (e.g. the row after clipping); the records are shared."""
        return ClientReply(self.client_id, self._message, self.sent_bytes, update,
                           content=self._content, reply_to=self._reply_to, extras=self.extras)

    @property
    def message(self) -> Message:
        """The reply as a Flower ``Message`` (made from the content on first use)."""
        if self._message is None:
            self._message = Message(content=self._content, reply_to=self._reply_to)
            self._content = self._reply_to = None
        return self._message

    @property
    def content(self) -> RecordDict:
        """The reply's records (of a successful reply), without making a ``Message`` for them."""
        return self._content if self._message is None else self._message.content

    @property
    def upload_bytes(self) -> int:
        """Bytes of arrays the client sent (what a real client would upload): its model and any extras."""
        if self.sent_bytes is not None:
            return self.sent_bytes
        if not self.ok:
            return 0
        records = self.content.array_records
        rows = ([self.update] if self.update is not None else []) + list(self.extras.values())
        return sum(row.nbytes for row in rows) + sum(
            record.count_bytes() for name, record in records.items()
            if not (name == ARRAYS and self.update is not None) and name not in self.extras)


    @property
    def ok(self) -> bool:
        return self._message is None or not self._message.has_error()

    @property
    def error(self) -> str:
        """The failure's reason ("" for a successful reply)."""
        return "" if self.ok else (self._message.error.reason or "error")

    @property
    def metrics(self) -> MetricRecord:
        return self.content[METRICS]

    @property
    def arrays(self) -> ArrayRecord:
        """The client's arrays as an ``ArrayRecord`` (built from its stacked row on first use)."""
        return self.materialized().content[ARRAYS]

    def materialized(self) -> Message:
        """The reply message with the client's arrays in it, as Flower's per-client strategies read it.

        A stacked update (:mod:`fedsim.core.stack`) is serialized into the message here, once;
        a reply that already carries its arrays is returned as it is.
        """
        if self.update is not None and self.ok and ARRAYS not in self.content.array_records:
            self.content[ARRAYS] = self.update.record()
        for name, extra in self.extras.items() if self.ok else ():
            if name not in self.content.array_records:
                self.content[name] = extra.record()
        return self.message


def failed_reply(task: ClientTask, reason: str, code: int = CLIENT_RAISED) -> ClientReply:
    """A reply carrying an ``Error`` for ``task`` (the client raised, or never answered)."""
    return ClientReply(task.client_id, Message(Error(code=code, reason=reason), reply_to=task.message))


def reply_content(client_id: int, metrics: Mapping[str, float | int],
                  arrays: ArrayRecord | None = None) -> RecordDict:
    """A client's reply records: its metrics, its partition id and (train) its arrays."""
    content = RecordDict({METRICS: MetricRecord(dict(metrics)),
                          CLIENT: ConfigRecord({PARTITION_ID: int(client_id)})})
    if arrays is not None:
        content[ARRAYS] = arrays
    return content


def reply(to: Message, client_id: int, metrics: Mapping[str, float | int],
          arrays: ArrayRecord | None = None) -> Message:
    """A client's reply message to the task ``to`` (:func:`reply_content` in a ``Message``)."""
    return Message(content=reply_content(client_id, metrics, arrays), reply_to=to)


def reply_client_id(message: Message) -> int | None:
    """The partition id a reply names (None for error replies and foreign messages)."""
    if message.has_error():
        return None
    record = message.content.config_records.get(CLIENT)
    return int(record[PARTITION_ID]) if record is not None and PARTITION_ID in record else None


def message_config(message: Message) -> ConfigRecord:
    """The task's ``config`` record (empty when the strategy sent none)."""
    return message.content.config_records.get(CONFIG) or ConfigRecord()


def array_bytes(messages: Iterable[Message]) -> int:
    """Bytes of model arrays carried by ``messages`` (what dominates FL communication).

    A content shared by several messages (a strategy may send one ``RecordDict`` to all) is
    counted once per message, because each message travels separately.
    """
    total = 0
    for msg in messages:
        if not msg.has_error() and msg.has_content():
            total += sum(rec.count_bytes() for rec in msg.content.array_records.values())
    return total


# ----------------------------------------------------------------------- peers (other clients' models)


def attach_peers(messages: Iterable[Message], peers: list[tuple[int, ArrayRecord]]) -> None:
    """Add ``peers`` as ``peer-<client id>`` ArrayRecords to every distinct content in ``messages``."""
    seen: set[int] = set()
    for msg in messages:
        if id(msg.content) in seen:
            continue
        seen.add(id(msg.content))
        for client_id, arrays in peers:
            msg.content[f"{PEER_PREFIX}{client_id}"] = arrays


def read_peers(message: Message) -> list[tuple[int, ArrayRecord]]:
    """The ``peer-<client id>`` ArrayRecords a task carries, as (client id, arrays)."""
    return [(int(key[len(PEER_PREFIX):]), record) for key, record in message.content.array_records.items()
            if key.startswith(PEER_PREFIX)]


# ----------------------------------------------------------------------- hook statistics


def hook_metric_key(hook: str, metric: str) -> str:
    """``hook.<name>.<metric>``: how a hook's statistic travels in the client's MetricRecord."""
    return f"{HOOK_PREFIX}{hook}.{metric}"


def hook_metrics(metrics: Mapping[str, object]) -> list[tuple[str, str, float]]:
    """The (hook, metric, value) entries of a MetricRecord."""
    out = []
    for key, value in metrics.items():
        if key.startswith(HOOK_PREFIX):
            hook, _, metric = key[len(HOOK_PREFIX):].partition(".")
            out.append((hook, metric, float(value)))  # type: ignore[arg-type]
    return out


# ----------------------------------------------------------------------- cohorts (many clients, one message)

COHORT_ACTION = "cohort"  # message type "train.cohort" / "evaluate.cohort": several clients' tasks
COHORT = "fedsim.cohort"  # the ConfigRecord that describes a packed cohort or its replies


def cohort_message_type(message_type: str) -> str:
    """``train`` -> ``train.cohort``: the type of a message carrying several clients' tasks."""
    return f"{message_type}.{COHORT_ACTION}"


def pack_cohort(tasks: list[ClientTask], num_clients: int, stream_key: str = "", threads: int = 0) -> RecordDict:
    """Several clients' tasks as one ``RecordDict``; a record shared by several tasks travels once.

    Strategies send one content to every client (the global arrays and config); peer models
    or distillation targets attached to it are shared too. Records are stored once as
    ``r<k>``, and the ``fedsim.cohort`` ConfigRecord says which client has which content and
    which records (by name) make up each content. A ``stream_key`` asks the worker to reply with
    the weighted mean of its clients' arrays (weighted by that metric) instead of every model;
    ``threads`` > 0 is the number of torch threads each client trains with.
    """
    records: list = []
    record_index: dict[int, int] = {}
    content_index: dict[int, int] = {}
    layout: dict[str, list] = {}
    content_of = []
    for task in tasks:
        content = task.message.content
        if id(content) not in content_index:
            j = content_index[id(content)] = len(content_index)
            names, refs = [], []
            for name, record in content.items():
                if id(record) not in record_index:
                    record_index[id(record)] = len(records)
                    records.append(record)
                names.append(name)
                refs.append(record_index[id(record)])
            layout[f"names-{j}"], layout[f"records-{j}"] = names, refs
        content_of.append(content_index[id(content)])
    packed = RecordDict({f"r{k}": record for k, record in enumerate(records)})
    packed[COHORT] = ConfigRecord({"clients": [t.client_id for t in tasks], "content-of": content_of,
                                   "num-clients": int(num_clients), "stream-key": stream_key,
                                   "threads": int(threads), **layout})
    return packed


def unpack_cohort(message: Message) -> list[ClientTask]:
    """A cohort message's per-client tasks (messages of the plain type, addressed to the client id)."""
    packed = message.content
    meta = packed[COHORT]
    message_type = message.metadata.message_type.partition(".")[0]
    contents: dict[int, RecordDict] = {}
    tasks = []
    for client_id, j in zip(meta["clients"], meta["content-of"]):
        if j not in contents:
            contents[j] = RecordDict({name: packed[f"r{k}"] for name, k in zip(meta[f"names-{j}"], meta[f"records-{j}"])})
        tasks.append(ClientTask(int(client_id), Message(contents[j], dst_node_id=int(client_id),
                                                        message_type=message_type)))
    return tasks


def pack_cohort_replies(replies: list[ClientReply], seconds: float, stream_key: str = "") -> RecordDict:
    """Every client's reply records as ``<client id>:<record name>``; failures by id and reason.

    Stacked updates (:mod:`fedsim.core.stack`) travel as their stacks: ``stack<j>`` holds one
    ``Array`` per dtype with every client's row, and ``stack<j>-*`` in the ``fedsim.cohort``
    record say whose rows they are, how a row splits into named arrays and, for a named extra
    stack (:attr:`ClientReply.extras`), its record name (``stack<j>-extra``; "" for the models). With a
    ``stream_key``, the clients' arrays do not travel: ``partial:arrays`` holds their weighted
    mean (by the ``stream_key`` metric), ``partial:metrics`` the total weight, and each client's
    upload size is recorded so results still count what real clients would send.
    """
    packed = RecordDict()
    failed, reasons, streamed, sizes = [], [], [], []
    stacks: dict[int, int] = {}  # id(stack) -> j
    meta: dict = {}
    for client_reply in replies:
        if not client_reply.ok:
            failed.append(client_reply.client_id)
            reasons.append(client_reply.error)
            continue
        if stream_key and (client_reply.update is not None or ARRAYS in client_reply.content.array_records):
            streamed.append(client_reply)
            sizes.append(client_reply.upload_bytes)
        elif client_reply.update is not None and id(client_reply.update.stack) not in stacks:
            j = stacks[id(client_reply.update.stack)] = len(stacks)
            record, layout = client_reply.update.stack.to_record()
            packed[f"stack{j}"] = record
            meta.update({f"stack{j}-{key}": value for key, value in {**layout, "extra": ""}.items()})
        for extra_name, extra in client_reply.extras.items():
            if id(extra.stack) not in stacks:
                j = stacks[id(extra.stack)] = len(stacks)
                record, layout = extra.stack.to_record()
                packed[f"stack{j}"] = record
                meta.update({f"stack{j}-{key}": value for key, value in {**layout, "extra": extra_name}.items()})
        for name, record in client_reply.content.items():
            if not (stream_key and name == ARRAYS):
                packed[f"{client_reply.client_id}:{name}"] = record
    if streamed:
        weights = [float(r.metrics[stream_key]) for r in streamed]
        updates = [r.update if r.update is not None else stack_of_records([r.arrays]).view(0) for r in streamed]
        packed[f"partial:{ARRAYS}"] = weighted_mean(updates, weights)
        packed[f"partial:{METRICS}"] = MetricRecord({stream_key: float(sum(weights))})
    packed[COHORT] = ConfigRecord({"failed": failed, "reasons": reasons, "seconds": float(seconds),
                                   "streamed": [r.client_id for r in streamed], "streamed-bytes": sizes,
                                   "stacks": len(stacks), **meta})
    return packed


def _unpack_stacks(packed: RecordDict) -> tuple[dict[int, StackedUpdate], dict[int, dict[str, StackedUpdate]]]:
    """client id -> its model's row, and client id -> its named extra rows, for every stack a cohort reply carries."""
    meta = packed[COHORT]
    rows: dict[int, StackedUpdate] = {}
    extras: dict[int, dict[str, StackedUpdate]] = {}
    for j in range(int(meta.get("stacks", 0))):
        prefix = f"stack{j}-"
        layout = {key[len(prefix):]: value for key, value in meta.items() if key.startswith(prefix)}
        stack = UpdateStack.from_record(packed[f"stack{j}"], layout)
        name = str(layout.get("extra", ""))
        for k, client_id in enumerate(stack.client_ids):
            if name:
                extras.setdefault(client_id, {})[name] = stack.view(k)
            else:
                rows[client_id] = stack.view(k)
    return rows, extras


def unpack_cohort_replies(message: Message, tasks: list[ClientTask]) -> list[ClientReply]:
    """One reply per task from a cohort's reply (a failed cohort message fails all its clients)."""
    if message.has_error():
        reason = f"its worker failed: {message.error.reason or 'error'}"
        return [failed_reply(task, reason) for task in tasks]
    packed = message.content
    meta = packed[COHORT]
    reasons = dict(zip((int(c) for c in meta["failed"]), meta["reasons"]))
    streamed = dict(zip((int(c) for c in meta["streamed"]), (int(b) for b in meta["streamed-bytes"])))
    stacked, extras = _unpack_stacks(packed)
    by_client: dict[int, RecordDict] = {}
    for key, record in packed.items():
        client, sep, name = key.partition(":")
        if sep and client.isdigit():
            by_client.setdefault(int(client), RecordDict())[name] = record
    replies = []
    for task in tasks:
        if task.client_id in reasons:
            replies.append(failed_reply(task, str(reasons[task.client_id])))
            continue
        content = by_client.get(task.client_id, RecordDict())
        replies.append(ClientReply(task.client_id, Message(content=content, reply_to=task.message),
                                   streamed.get(task.client_id), stacked.get(task.client_id),
                                   extras=extras.get(task.client_id)))
    return replies


def cohort_partial(message: Message, task: ClientTask) -> Message | None:
    """A streaming worker's partial aggregate as one reply message (None when it sent none)."""
    if message.has_error() or f"partial:{ARRAYS}" not in message.content:
        return None
    content = RecordDict({ARRAYS: message.content[f"partial:{ARRAYS}"], METRICS: message.content[f"partial:{METRICS}"]})
    return Message(content=content, reply_to=task.message)


def cohort_seconds(message: Message) -> float:
    """How long the worker was busy with a cohort (NaN for a failed cohort message)."""
    return float("nan") if message.has_error() else float(message.content[COHORT]["seconds"])


# ----------------------------------------------------------------------- joining a run (what a node hosts)

JOIN = "fedsim.join"  # the ConfigRecord of the server's join query and of the node's answer


@dataclass(frozen=True)
class NodeAnswer:
    """What a node said when it joined a run: its shard, whether it has its own data, a problem."""

    node_id: int
    own_data: bool
    shard: int | None
    shards: int | None
    error: str = ""


def join_query(run_dir: str, files: Mapping[str, bytes], digest: str) -> RecordDict:
    """The server's query to a node joining a run: the run directory (shared-storage nodes read
    it) and, for nodes with their own data, the run's small files and the dataset's digest."""
    return RecordDict({JOIN: ConfigRecord({"run-dir": run_dir, "digest": digest, "names": list(files),
                                           **{f"file:{name}": bytes(data) for name, data in files.items()}})})


def read_join_query(message: Message) -> tuple[str, dict[str, bytes], str] | None:
    """(run directory, files, digest) of a join query; None for another query."""
    if not message.has_content() or JOIN not in message.content.config_records:
        return None
    record = message.content.config_records[JOIN]
    files = {str(name): bytes(record[f"file:{name}"]) for name in record["names"]}
    return str(record["run-dir"]), files, str(record["digest"])


def join_answer(own_data: bool, shard: int | None, shards: int | None, error: str = "") -> RecordDict:
    return RecordDict({JOIN: ConfigRecord({"own-data": bool(own_data), "shard": -1 if shard is None else int(shard),
                                           "shards": -1 if shards is None else int(shards), "error": error})})


def read_join_answer(message: Message) -> NodeAnswer:
    """A node's answer to the join query (a failed query message is an answer with an error)."""
    node_id = int(message.metadata.src_node_id)
    if message.has_error():
        return NodeAnswer(node_id, False, None, None, message.error.reason or "the node's ClientApp failed")
    record = message.content.config_records[JOIN]
    shard, shards = int(record["shard"]), int(record["shards"])
    return NodeAnswer(node_id, bool(record["own-data"]), None if shard < 0 else shard, None if shards < 0 else shards,
                      str(record["error"]))
