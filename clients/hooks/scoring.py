"""Scoring hooks: ``crucial`` (Singh and Toshniwal, committee votes) and ``select`` (Jiang et al.
2017, eq. 6). Algorithms, defaults and the ambiguities resolved: ``docs/methods.md``.

Both store per-sample scores and a mask in the client's
:class:`LocalData` (``scores["crucial"]``/``masks["crucial"]``, ``scores["select"]``/
``masks["select"]``) so that ``augment`` (or a user hook) can act on them, and both report
what they found.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fedsim.core.extension import RoundExtension

from .base import Hook, HookContext, LocalData, require
from .extensions import PeerCommittee

CONFIDENCES = ("cross_entropy", "entropy", "gini_simpson", "max_likelihood")
PROXIES = ("corr_conf", "correctness", "uniform")


# ----------------------------------------------------------------------------- crucial (Singh and Toshniwal)


def committee_scores(votes: np.ndarray) -> np.ndarray:
    """s_i = number of committee members predicting sample i's true label (votes: n x k bool)."""
    return votes.sum(axis=1).astype(np.int64)


def crucial_mask(scores: np.ndarray, theta: int, rule: str) -> np.ndarray:
    """Crucial if s < theta (rule ``lt``, the default) or s <= theta (rule ``le``)."""
    return scores < theta if rule == "lt" else scores <= theta


def stratified_chunks(labels: np.ndarray, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A seeded, stratified shuffle cut into k disjoint chunks (class-balanced, unlike contiguous slices)."""
    order = np.concatenate([rng.permutation(np.nonzero(labels == c)[0]) for c in np.unique(labels)])
    return [order[i::k] for i in range(k)]


@torch.no_grad()
def predictions(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[s : s + batch_size]).argmax(1) for s in range(0, len(x), batch_size)])


class CrucialHook(Hook):
    """Singh and Toshniwal: a committee of k models votes on each local sample; few correct votes = crucial.

    Parameters: ``committee`` = ``"chunks"`` (the paper: k tiny models, each trained with the
    client's recipe on one of k stratified chunks of the local data) or ``"peers"`` (the
    federated form: the models of the previous round's clients, sent by the server; none exist
    in round 1, so nothing is crucial then); ``k`` (10), ``theta`` (9), ``rule`` (``lt``: s < theta;
    ``le``: s <= theta), ``leave_own_out`` (chunks: a sample's own chunk model does not vote;
    peers: the client's own previous model does not vote), ``tiny_epochs`` (chunk models'
    epochs, default the client's local epochs). Reports the crucial fraction, committee size,
    the mean score and per-class crucial counts.
    """

    name = "crucial"

    def __init__(self, committee: str = "chunks", k: int = 10, theta: int = 9, rule: str = "lt",
                 leave_own_out: bool = False, tiny_epochs: int = 0) -> None:
        require(committee in ("chunks", "peers"), self.name, "committee", committee, "allowed: chunks, peers")
        require(isinstance(k, int) and k >= 2, self.name, "k", k, "must be an integer >= 2")
        require(isinstance(theta, int) and 0 <= theta <= k, self.name, "theta", theta, f"must be an integer in 0..k ({k})")
        require(rule in ("lt", "le"), self.name, "rule", rule, "allowed: lt (s < theta), le (s <= theta)")
        require(isinstance(tiny_epochs, int) and tiny_epochs >= 0, self.name, "tiny_epochs", tiny_epochs, "must be >= 0")
        self.committee, self.k, self.theta, self.rule = committee, k, theta, rule
        self.leave_own_out, self.tiny_epochs = leave_own_out, tiny_epochs

    def round_extension(self) -> RoundExtension | None:
        """With ``committee = "peers"`` the server attaches the previous round's first k client models."""
        return PeerCommittee(self.k) if self.committee == "peers" else None

    def _chunk_votes(self, data: LocalData, ctx: HookContext) -> np.ndarray:
        from fedsim.clients.training import seeded_init, train

        labels = data.labels.cpu().numpy()
        chunks = stratified_chunks(labels, self.k, ctx.rng(0xC0))
        x = ctx.normalize(data.images)
        votes = np.zeros((len(data), self.k), dtype=bool)
        epochs = self.tiny_epochs or ctx.recipe.epochs
        recipe = ctx.recipe.with_epochs(epochs)
        for j, chunk in enumerate(chunks):
            with seeded_init(ctx.generator(0xC1, j)):  # seeded initial weights
                tiny = ctx.build_model()
            idx = torch.as_tensor(chunk, device=x.device)
            train(tiny, x[idx], data.labels[idx], recipe, ctx.generator(0xC2, j))
            votes[:, j] = (predictions(tiny, x) == data.labels).cpu().numpy()
            if self.leave_own_out:
                votes[chunk, j] = False
        return votes

    def _peer_votes(self, data: LocalData, ctx: HookContext) -> np.ndarray:
        peers = [(cid, state) for cid, state in ctx.peers if not (self.leave_own_out and cid == ctx.client_id)]
        x = ctx.normalize(data.images)
        votes = np.zeros((len(data), len(peers)), dtype=bool)
        model = ctx.build_model()
        for j, (_, state) in enumerate(peers):
            model.load_state_dict(state)
            votes[:, j] = (predictions(model, x) == data.labels).cpu().numpy()
        return votes

    def prepare(self, data: LocalData, ctx: HookContext) -> LocalData:
        votes = self._chunk_votes(data, ctx) if self.committee == "chunks" else self._peer_votes(data, ctx)
        members = votes.shape[1]
        if self.committee == "chunks" and self.leave_own_out:
            members = self.k - 1
        scores = committee_scores(votes)
        theta = self.theta if self.committee == "chunks" else min(self.theta, members)
        mask = crucial_mask(scores, theta, self.rule) if members else np.zeros(len(data), dtype=bool)
        data.scores[self.name], data.masks[self.name] = scores.astype(float), mask
        stats = {"fraction": float(mask.mean()) if len(mask) else 0.0, "committee_size": float(members),
                 "count": float(mask.sum()), "mean_score": float(scores.mean()) if len(scores) else 0.0}
        for c, n in enumerate(data.class_counts(mask)):
            stats[f"count_class{c}"] = float(n)
        ctx.stats[self.name] = stats
        return data


# ----------------------------------------------------------------------------- select (Jiang et al.)


def confidence(probs: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """C(p_i): cross-entropy -log p[y], entropy, Gini-Simpson 1 - sum p^2, max-likelihood 1 - max p."""
    if kind == "cross_entropy":
        return -torch.log(probs.gather(1, labels[:, None]).squeeze(1).clamp_min(1e-12))
    if kind == "entropy":
        return -(probs * torch.log(probs.clamp_min(1e-12))).sum(1)
    if kind == "gini_simpson":
        return 1 - (probs**2).sum(1)
    if kind == "max_likelihood":
        return 1 - probs.max(1).values
    raise ValueError(f"unknown confidence {kind!r}; allowed: {', '.join(CONFIDENCES)}")


def proxy_scores(probs: torch.Tensor, labels: torch.Tensor, proxy: str, kind: str, eps: float,
                 rng: np.random.Generator) -> np.ndarray:
    """g_i of Jiang et al.: eq. 6 (``corr_conf``), ``correctness`` (ties broken at random), ``uniform``."""
    wrong = (probs.argmax(1) != labels).cpu().numpy()
    if proxy == "uniform":
        return rng.uniform(size=len(labels))
    if proxy == "correctness":
        return wrong.astype(float) + rng.uniform(0, 1e-3, size=len(labels))  # random tie-breaking
    c = confidence(probs, labels, kind).cpu().numpy().astype(np.float64)
    return np.where(wrong, c, -1.0 / (c + eps))


def top_fraction(scores: np.ndarray, rho: float) -> np.ndarray:
    """Indices of the floor(rho * n) largest scores (eq. 4 read as <= floor(rho n))."""
    k = int(np.floor(rho * len(scores)))
    return np.argsort(-scores, kind="stable")[:k]


class SelectHook(Hook):
    """Jiang et al.: rank local samples by the proxy g (eq. 6) under the received global model, keep top rho.

    Parameters: ``rho`` (budget, share kept), ``proxy`` (``corr_conf``, ``correctness``,
    ``uniform``), ``confidence`` (``cross_entropy``, ``entropy``, ``gini_simpson``,
    ``max_likelihood``), ``eps`` (1e-6), ``use`` = ``"subset"`` (train only on the selected
    samples) or ``"extra"`` (train on everything, the selected samples ``extra_passes`` more times),
    ``start_round`` (1; before it clients train on all their data, e.g. to warm up the scorer as
    the paper's initial model).
    Reports the selected fraction, the misclassified fraction overall and among the selected,
    and per-class selected counts.
    """

    name = "select"

    def __init__(self, rho: float = 0.3, proxy: str = "corr_conf", confidence: str = "cross_entropy",
                 eps: float = 1e-6, use: str = "subset", extra_passes: int = 1, start_round: int = 1) -> None:
        require(isinstance(rho, (int, float)) and 0 < rho <= 1, self.name, "rho", rho, "must be in (0, 1]")
        require(proxy in PROXIES, self.name, "proxy", proxy, f"allowed: {', '.join(PROXIES)}")
        require(confidence in CONFIDENCES, self.name, "confidence", confidence, f"allowed: {', '.join(CONFIDENCES)}")
        require(use in ("subset", "extra"), self.name, "use", use, "allowed: subset, extra")
        require(isinstance(extra_passes, int) and extra_passes >= 1, self.name, "extra_passes", extra_passes, "must be >= 1")
        require(isinstance(start_round, int) and start_round >= 1, self.name, "start_round", start_round,
                "must be an integer >= 1")
        self.rho, self.proxy, self.kind, self.eps = float(rho), proxy, confidence, eps
        self.use, self.extra_passes, self.start_round = use, extra_passes, start_round

    def prepare(self, data: LocalData, ctx: HookContext) -> LocalData:
        if ctx.server_round < self.start_round:
            data.masks[self.name] = np.ones(len(data), dtype=bool)
            ctx.stats[self.name] = {"fraction": 1.0, "count": float(len(data)), "misclassified_fraction": float("nan"),
                                    "misclassified_among_selected": float("nan"),
                                    **{f"count_class{c}": float(n) for c, n in enumerate(data.class_counts())}}
            return data
        x = ctx.normalize(data.images)
        with torch.no_grad():
            ctx.global_model.eval()
            probs = torch.cat([F.softmax(ctx.global_model(x[s : s + 512]), 1) for s in range(0, len(x), 512)])
        scores = proxy_scores(probs, data.labels, self.proxy, self.kind, self.eps, ctx.rng(0x5E))
        keep = np.sort(top_fraction(scores, self.rho))
        mask = np.zeros(len(data), dtype=bool)
        mask[keep] = True
        wrong = (probs.argmax(1) != data.labels).cpu().numpy()
        data.scores[self.name], data.masks[self.name] = scores, mask
        stats = {"fraction": float(mask.mean()), "count": float(mask.sum()),
                 "misclassified_fraction": float(wrong.mean()),
                 "misclassified_among_selected": float(wrong[mask].mean()) if mask.any() else 0.0}
        for c, n in enumerate(data.class_counts(mask)):
            stats[f"count_class{c}"] = float(n)
        ctx.stats[self.name] = stats
        if self.use == "subset":
            return data.subset(keep)
        repeats = np.concatenate([np.arange(len(data))] + [keep] * self.extra_passes)
        return data.subset(repeats)
