"""fedsim's round loop: the one place that drives a Flower strategy round by round.

Flower's ``Strategy.start()`` is closed (no per-round callback, unseeded node sampling), so
fedsim calls the strategy's variation points itself -- ``configure_train``,
``aggregate_train``, ``configure_evaluate``, ``aggregate_evaluate`` -- and around them does
what every run needs: seeded client sampling by partition id, per-client results, failure
accounting, centralized evaluation, and streaming one row per round to the run directory.
Any ``flwr.serverapp.strategy`` strategy plugs in unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim.clients.app import FAIL_KEY, PEER_PREFIX, RUN_DIR_KEY
from fedsim.clients.training import SGDRecipe, evaluate, seeded_generator, to_tensor, train
from fedsim.config import ExperimentConfig
from fedsim.metrics import confusion_matrix, macro_scores
from fedsim.models import FedsimNet
from fedsim.recorder import RunRecorder
from fedsim.sampling import EVALUATE, TRAIN, SampledGrid, sample_clients, sample_size


class AggregationError(RuntimeError):
    """The strategy produced no global model from a round's successful replies."""


class TooFewClientsError(RuntimeError):
    """Fewer sampled clients succeeded in a round than ``simulation.min_success_fraction``."""


@dataclass
class CentralEvaluator:
    """Evaluates global weights on the server's copy of the test set."""

    model: FedsimNet
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    batch_size: int

    @classmethod
    def build(cls, model: FedsimNet, images: np.ndarray, labels: np.ndarray,
              mean: tuple[float, ...], std: tuple[float, ...], device: torch.device,
              batch_size: int) -> "CentralEvaluator":
        model = model.to(device)
        x = to_tensor(np.array(images), mean, std, device)  # a writable copy of the memory map
        y = torch.from_numpy(np.array(labels, dtype=np.int64)).to(device)
        return cls(model, x, y, model.num_classes, batch_size)

    def __call__(self, arrays: ArrayRecord) -> tuple[dict[str, float], np.ndarray]:
        self.model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
        stats = evaluate(self.model, self.x_test, self.y_test, self.batch_size)
        matrix = confusion_matrix(self.y_test.cpu().numpy(), stats.predictions, self.num_classes)
        scores = macro_scores(matrix)
        metrics = {"test_loss": stats.loss, "test_accuracy": stats.accuracy,
                   "test_precision": scores["precision"], "test_recall": scores["recall"],
                   "test_f1": scores["f1"]}
        return metrics, matrix


def array_bytes(messages: Iterable[Message]) -> int:
    """Bytes of model arrays carried by ``messages`` (what dominates FL communication)."""
    total = 0
    for msg in messages:
        if msg.has_content():
            total += sum(rec.count_bytes() for rec in msg.content.array_records.values())
    return total


def map_partitions_to_nodes(grid: Grid, num_clients: int, timeout: float) -> dict[int, int]:
    """Ask every node which partition it hosts (one query message each): partition id -> node id."""
    deadline = time.monotonic() + timeout
    while len(node_ids := list(grid.get_node_ids())) < num_clients:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(node_ids)} of {num_clients} simulated nodes came up "
                               f"within {timeout:.0f} s")
        time.sleep(0.05)
    queries = [Message(RecordDict(), dst_node_id=nid, message_type=MessageType.QUERY) for nid in node_ids]
    mapping: dict[int, int] = {}
    for reply in grid.send_and_receive(queries, timeout=timeout):
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id} failed the partition query: "
                               f"{reply.error.reason}")
        mapping[int(reply.content["client"]["partition-id"])] = reply.metadata.src_node_id
    missing = sorted(set(range(num_clients)) - set(mapping))
    if missing:
        raise RuntimeError(f"no node reported partitions {missing[:10]}")
    return mapping


def _client_rows(server_round: int, phase: str, sent: list[int], replies: list[Message],
                 node_to_client: dict[int, int]) -> tuple[list[dict], list[Message]]:
    """One row per sampled client (ok or failed) and the successful replies."""
    rows, ok = [], []
    answered = set()
    for reply in replies:
        client_id = node_to_client[reply.metadata.src_node_id]
        answered.add(client_id)
        row = {"round": server_round, "phase": phase, "client_id": client_id}
        if reply.has_error():
            rows.append({**row, "status": "failed", "error": reply.error.reason or "error"})
            continue
        ok.append(reply)
        metrics = reply.content["metrics"]
        prefix = "train" if phase == "train" else "eval"
        rows.append({**row, "status": "ok", "num_examples": int(metrics["num-examples"]),
                     "loss": float(metrics[f"{prefix}-loss"]),
                     "accuracy": float(metrics[f"{prefix}-accuracy"]),
                     "tpriv_accuracy": float(metrics["tpriv-accuracy"]) if "tpriv-accuracy" in metrics else np.nan,
                     "seconds": float(metrics.get("client-seconds", np.nan)) if phase == "train" else np.nan})
    for client_id in sorted(set(sent) - answered):
        rows.append({"round": server_round, "phase": phase, "client_id": client_id,
                     "status": "failed", "error": "no reply before simulation.round_timeout"})
    rows.sort(key=lambda r: r["client_id"])
    return rows, ok


def hook_rows(server_round: int, replies: list[Message], client_of: dict[int, int]) -> list[dict]:
    """The ``hook.<name>.<metric>`` entries of the clients' MetricRecords, one row each."""
    rows = []
    for reply in replies:
        for key, value in reply.content["metrics"].items():
            if key.startswith("hook."):
                _, hook, metric = key.split(".", 2)
                rows.append({"round": server_round, "client_id": client_of[reply.metadata.src_node_id],
                             "hook": hook, "metric": metric, "value": float(value)})
    return sorted(rows, key=lambda r: (r["client_id"], r["hook"], r["metric"]))


def attach_peers(messages: list[Message], peers: list[tuple[int, ArrayRecord]]) -> None:
    """Add the previous round's client models as ``peer-<client id>`` ArrayRecords (crucial committee)."""
    seen: set[int] = set()
    for msg in messages:
        if id(msg.content) in seen:
            continue
        seen.add(id(msg.content))
        for client_id, arrays in peers:
            msg.content[f"{PEER_PREFIX}{client_id}"] = arrays


def peer_committee_size(config: ExperimentConfig) -> int:
    """How many previous-round client models the crucial hook's "peers" committee needs (0 = none)."""
    for spec in config.hooks:
        if spec.get("name") == "crucial" and spec.get("committee") == "peers":
            return int(spec.get("k", 10))
    return 0


def evaluate_client_models(server_round: int, replies: list[Message], client_of: dict[int, int],
                           evaluator: CentralEvaluator) -> list[dict]:
    """Test-set metrics of each client's own uploaded model (phase ``local-test``)."""
    rows = []
    for reply in replies:
        metrics, _ = evaluator(reply.content["arrays"])
        rows.append({"round": server_round, "phase": "local-test",
                     "client_id": client_of[reply.metadata.src_node_id], "status": "ok",
                     "num_examples": len(evaluator.y_test), "loss": metrics["test_loss"],
                     "accuracy": metrics["test_accuracy"]})
    return sorted(rows, key=lambda r: r["client_id"])


def run_centralized(config: ExperimentConfig, model: FedsimNet, x: torch.Tensor, y: torch.Tensor,
                    evaluator: CentralEvaluator, recorder: RunRecorder,
                    on_round: Callable[[dict], None] | None = None) -> ArrayRecord:
    """The centralized baseline: the same model and recipe on the union of the clients' data.

    Each "round" is ``local_epochs`` epochs over the union, so ``rounds`` rounds spend the
    same number of epochs as a federated run in which every client trains every round.
    """
    t = config.train
    recipe = SGDRecipe(t.local_epochs, t.batch_size, t.lr, t.momentum, t.weight_decay)
    arrays = ArrayRecord(model.state_dict())
    _initial_evaluation(config, evaluator, arrays, recorder, on_round)
    union_id = config.partition.num_clients  # a generator stream no client uses
    for server_round in range(1, t.rounds + 1):
        started = time.perf_counter()
        generator = seeded_generator(config.seed, server_round, union_id)
        torch.manual_seed(generator.initial_seed())
        stats = train(model, x, y, recipe, generator)
        arrays = ArrayRecord(model.state_dict())
        row: dict = {"round": server_round, "train_loss": stats.loss, "train_accuracy": stats.accuracy,
                     "bytes_down": 0, "bytes_up": 0}
        if _due(config.evaluation.centralized_every, server_round, t.rounds):
            _evaluate_into(row, evaluator, arrays, recorder)
        _finish_round(row, started, recorder, on_round)
    return arrays


def _initial_evaluation(config: ExperimentConfig, evaluator: CentralEvaluator, arrays: ArrayRecord,
                        recorder: RunRecorder, on_round: Callable[[dict], None] | None) -> None:
    """Round 0: the initial global model on the test set (when centralized evaluation is on)."""
    if config.evaluation.centralized_every > 0:
        row = {"round": 0, "bytes_down": 0, "bytes_up": 0, "wall_seconds": 0.0}
        _evaluate_into(row, evaluator, arrays, recorder)
        _finish_round(row, None, recorder, on_round)


def _evaluate_into(row: dict, evaluator: CentralEvaluator, arrays: ArrayRecord, recorder: RunRecorder) -> None:
    metrics, matrix = evaluator(arrays)
    row.update(metrics)
    recorder.set_confusion(matrix)


def _finish_round(row: dict, started: float | None, recorder: RunRecorder,
                  on_round: Callable[[dict], None] | None) -> None:
    if started is not None:
        row["wall_seconds"] = time.perf_counter() - started
    recorder.add_round(row)
    if on_round:
        on_round(row)


def _view_means(rows: list[dict]) -> dict[str, float]:
    """Mean and spread over clients of their own models' T_uni and T_priv accuracy."""
    ok = [r for r in rows if r["status"] == "ok"]
    uni = np.array([r["accuracy"] for r in ok], dtype=float)
    priv = np.array([r["tpriv_accuracy"] for r in ok], dtype=float)
    if not len(ok):
        return {}
    return {"test_accuracy": float(uni.mean()), "tuni_std": float(uni.std()),
            "tpriv_accuracy": float(np.nanmean(priv)), "tpriv_std": float(np.nanstd(priv)),
            "test_loss": float(np.mean([r["loss"] for r in ok]))}


def _weighted(rows: list[dict], key: str) -> float:
    good = [r for r in rows if r["status"] == "ok" and np.isfinite(r[key])]
    total = sum(r["num_examples"] for r in good)
    return float(sum(r[key] * r["num_examples"] for r in good) / total) if total else float("nan")


def _due(every: int, server_round: int, last: int) -> bool:
    return every > 0 and (server_round % every == 0 or server_round == last)


def run_rounds(
    grid: Grid,
    config: ExperimentConfig,
    strategy: Strategy,
    initial_arrays: ArrayRecord,
    evaluator: CentralEvaluator,
    recorder: RunRecorder,
    on_round: Callable[[dict], None] | None = None,
    transfer_labels: np.ndarray | None = None,
) -> ArrayRecord:
    """Run ``config.train.rounds`` rounds of ``strategy``; return the final global arrays.

    Strategies without a global model (``strategy.global_model = False``, e.g. latent-distill)
    carry their targets in ``arrays`` instead: the centralized evaluation is skipped, the round's
    test accuracy is the mean of the clients' own models on the test set (T_uni), and with
    ``transfer_labels`` the consensus logits' accuracy on the transfer set is recorded.
    """
    global_model = getattr(strategy, "global_model", True)
    num_clients = config.partition.num_clients
    sim = config.simulation
    node_of = map_partitions_to_nodes(grid, num_clients, timeout=min(sim.round_timeout, 600.0))
    client_of = {node: client for client, node in node_of.items()}
    base_config = {RUN_DIR_KEY: str(recorder.folder)}
    if sim.fail_clients:
        base_config[FAIL_KEY] = list(sim.fail_clients)
    k_train = sample_size(num_clients, config.train.fraction_train, config.train.clients_per_round)
    k_eval = sample_size(num_clients, config.evaluation.fraction_evaluate, config.evaluation.clients_per_eval)
    rounds = config.train.rounds
    committee = peer_committee_size(config)
    peers: list[tuple[int, ArrayRecord]] = []

    arrays = initial_arrays
    if global_model:
        _initial_evaluation(config, evaluator, arrays, recorder, on_round)

    for server_round in range(1, rounds + 1):
        started = time.perf_counter()
        sampled = sample_clients(config.seed, server_round, TRAIN, num_clients, k_train)
        view = SampledGrid(grid, [node_of[c] for c in sampled])
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(base_config), view))
        if peers:
            attach_peers(messages, peers)
        sent_to = [client_of[m.metadata.dst_node_id] for m in messages]
        replies = list(grid.send_and_receive(messages, timeout=sim.round_timeout))
        rows, ok = _client_rows(server_round, "train", sent_to, replies, client_of)
        recorder.add_clients(rows)
        needed = int(np.ceil(sim.min_success_fraction * len(sent_to)))
        if len(ok) < max(needed, 1):
            errors = "; ".join(f"client {r['client_id']}: {r['error']}" for r in rows if r["status"] == "failed")
            raise TooFewClientsError(
                f"round {server_round}: only {len(ok)} of {len(sent_to)} sampled clients succeeded "
                f"(simulation.min_success_fraction = {sim.min_success_fraction} needs {needed}). "
                f"Failures: {errors[:2000]}"
            )
        bytes_up = array_bytes(ok)  # before aggregation: some strategies consume the replies' arrays
        recorder.add_hook_stats(hook_rows(server_round, ok, client_of))
        if committee:
            peers = sorted((client_of[m.metadata.src_node_id], m.content["arrays"]) for m in ok)[:committee]
        if global_model and (config.evaluation.client_models or config.train.mode == "one-shot"):
            recorder.add_clients(evaluate_client_models(server_round, ok, client_of, evaluator))
        new_arrays, _ = strategy.aggregate_train(server_round, replies)
        if new_arrays is None:
            raise AggregationError(
                f"round {server_round}: strategy {type(strategy).__name__} returned no aggregate "
                f"from {len(ok)} successful replies; check its requirements (e.g. Bulyan needs "
                "n >= 4 * num_malicious_nodes + 3 clients per round, Krum n > 2f + 2)"
            )
        arrays = new_arrays
        row: dict = {
            "round": server_round,
            "clients_sampled": len(sent_to),
            "clients_succeeded": len(ok),
            "clients_failed": len(sent_to) - len(ok),
            "train_loss": _weighted(rows, "loss"),
            "train_accuracy": _weighted(rows, "accuracy"),
            "bytes_down": array_bytes(messages),
            "bytes_up": bytes_up,
        }

        if _due(config.evaluation.federated_every, server_round, rounds):
            eval_sampled = sample_clients(config.seed, server_round, EVALUATE, num_clients, k_eval)
            eval_view = SampledGrid(grid, [node_of[c] for c in eval_sampled])
            eval_messages = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(base_config), eval_view))
            eval_replies = list(grid.send_and_receive(eval_messages, timeout=sim.round_timeout))
            eval_rows, _ = _client_rows(server_round, "evaluate",
                                        [client_of[m.metadata.dst_node_id] for m in eval_messages],
                                        eval_replies, client_of)
            recorder.add_clients(eval_rows)
            strategy.aggregate_evaluate(server_round, eval_replies)
            row["fed_eval_loss"] = _weighted(eval_rows, "loss")
            row["fed_eval_accuracy"] = _weighted(eval_rows, "accuracy")
            row["bytes_down"] += array_bytes(eval_messages)
            if not global_model:
                row.update(_view_means(eval_rows))

        if not global_model and transfer_labels is not None and "logits" in arrays:
            row["consensus_accuracy"] = float(
                (arrays["logits"].numpy().argmax(1) == transfer_labels).mean())
        if global_model and _due(config.evaluation.centralized_every, server_round, rounds):
            _evaluate_into(row, evaluator, arrays, recorder)
        _finish_round(row, started, recorder, on_round)
    return arrays
