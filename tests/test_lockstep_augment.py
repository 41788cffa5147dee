"""Online augmentation under the vectorized engine: one transform call per step group, same bits.

A lockstep chunk whose clients augment online draws every client's parameters from its own
generator and applies them to the step group's batches in one call
(:class:`fedsim.clients.lockstep.batches.CohortBatches`). Compared exactly (``torch.equal``) with
the per-client path it replaced: each client's batch prepared by its hooks' ``transform_batch``
then ``ctx.normalize``, one call per client and step, stacked. The sequential engine, which now
calls the same :class:`~fedsim.clients.preparation.BatchPreparation`, is compared exactly with
that per-client function too.
"""

from __future__ import annotations

import copy

import pytest
import torch

from fedsim.clients import training
from fedsim.clients.hooks import AugmentHook, Hook, HookContext, LocalData, SelectHook
from fedsim.clients.hooks.transforms import BatchTransform, FlipCrop, SeededTransform
from fedsim.clients.lockstep.batches import ClientBatches, CohortBatches, ReadyBatches, step_batches
from fedsim.clients.lockstep.engine import LockstepClient, LockstepResult, LockstepTrainer
from fedsim.clients.preparation import BatchPreparation, batch_preparation
from fedsim.core.recipe import SGDRecipe
from fedsim.models import build_model

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
RECIPE = SGDRecipe(epochs=2, batch_size=8, lr=0.05, momentum=0.9, weight_decay=5e-4)
SIZES = (23, 40, 17, 31, 3)  # partial last batches of 7, 1 (kept: no BatchNorm), 7 and 3 samples
TRANSFORMS = ("flip_crop", "affine", "randaugment", "flip_crop_randaugment")


def _images(sizes: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    rng = torch.Generator().manual_seed(3)
    return [(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=rng),
             torch.randint(0, 10, (n,), generator=rng)) for n in sizes]


def _context(client_id: int, global_model: torch.nn.Module | None = None) -> HookContext:
    return HookContext(seed=0, server_round=1, client_id=client_id, device=torch.device("cpu"),
                       global_model=global_model, normalize=lambda xb: training.normalize(xb, MEAN, STD),
                       build_model=None, recipe=RECIPE, peers=[])


def _prepared(hooks: list[Hook], client_id: int, images: torch.Tensor, labels: torch.Tensor,
              global_model: torch.nn.Module | None = None) -> HookContext:
    ctx = _context(client_id, global_model)
    data = LocalData(images, labels, 10)
    for hook in hooks:
        data = hook.prepare(data, ctx)
    return ctx


def cohort_preparation(transform: str, client_id: int, images: torch.Tensor, labels: torch.Tensor):  # noqa: ANN201
    """A client's preparation as :meth:`LocalClient.training_inputs` builds it now."""
    hooks: list[Hook] = [AugmentHook(transform=transform, mode="online")]
    return batch_preparation(hooks, _prepared(hooks, client_id, images, labels), MEAN, STD)


def per_client_preparation(transform: str, client_id: int, images: torch.Tensor, labels: torch.Tensor):  # noqa: ANN201
    """A client's preparation as it was built before: its hooks' stages, then ``ctx.normalize``."""
    hooks: list[Hook] = [AugmentHook(transform=transform, mode="online")]
    ctx = _prepared(hooks, client_id, images, labels)

    def prepare_batch(xb: torch.Tensor) -> torch.Tensor:
        for hook in hooks:
            xb = hook.transform_batch(xb, ctx)
        return ctx.normalize(xb)

    return prepare_batch


class CallCounter:
    """Counts calls of a transform class's ``draw`` and ``apply`` (wrapped on the class)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cls: type[BatchTransform]) -> None:
        self.draws = self.applies = 0
        draw, apply = cls.draw, cls.apply

        def counted_draw(transform, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            self.draws += 1
            return draw(transform, *args, **kwargs)

        def counted_apply(transform, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            self.applies += 1
            return apply(transform, *args, **kwargs)

        monkeypatch.setattr(cls, "draw", counted_draw)
        monkeypatch.setattr(cls, "apply", counted_apply)

    def take(self) -> tuple[int, int]:
        """(draws, applies) counted since the last call."""
        counts = (self.draws, self.applies)
        self.draws = self.applies = 0
        return counts


def _train_chunk(preparation_of, transform: str) -> LockstepResult:  # noqa: ANN001
    torch.manual_seed(0)
    model = build_model("lenet5", 10, 0, 3)
    clients = [LockstepClient(x, y, model.state_dict(), training.seeded_generator(0, 1, k),
                              preparation_of(transform, k, x, y)) for k, (x, y) in enumerate(_images(SIZES))]
    return LockstepTrainer(model, (3, 32, 32)).train(clients, RECIPE)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_a_lockstep_chunk_augments_each_step_group_in_one_call_with_the_per_client_results(
        transform: str, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = CallCounter(monkeypatch, type(AugmentHook(transform=transform, mode="online").transform))
    before = _train_chunk(per_client_preparation, transform)
    draws_before, applies_before = counter.take()
    after = _train_chunk(cohort_preparation, transform)
    draws_after, applies_after = counter.take()

    for old, new in zip(before.states, after.states):
        assert all(torch.equal(old[name], new[name]) for name in old)
    assert [vars(s) for s in before.stats] == [vars(s) for s in after.stats]
    client_steps = sum(s.steps for s in after.stats)
    assert draws_before == applies_before == client_steps  # before: one call per client and step
    assert draws_after == client_steps  # each client's parameters from its own generator
    assert applies_after == after.calls < client_steps  # one call per step and batch size


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_the_sequential_engine_prepares_batches_as_before(transform: str) -> None:
    torch.manual_seed(0)
    model = build_model("lenet5", 10, 0, 3)
    x, y = _images((37,))[0]
    states = []
    for preparation_of in (per_client_preparation, cohort_preparation):
        local = copy.deepcopy(model)
        training.train(local, x, y, RECIPE, training.seeded_generator(0, 1, 4),
                       prepare_batch=preparation_of(transform, 4, x, y))
        states.append(local.state_dict())
    assert all(torch.equal(states[0][name], states[1][name]) for name in states[0])


class OwnTransform:
    """A user hook whose ``transform_batch`` is its own code: called per client and step."""

    def transform_batch(self, xb: torch.Tensor, ctx: HookContext) -> torch.Tensor:
        return xb.flip(-1)


class SeededCrop(OwnTransform):
    """A user hook that describes its ``transform_batch`` as a seeded transform: joined across clients."""

    def __init__(self) -> None:
        self.crop = FlipCrop(padding=2)

    def transform_batch(self, xb: torch.Tensor, ctx: HookContext) -> torch.Tensor:
        return self.crop(xb, self.generator)

    def prepare(self, data: LocalData, ctx: HookContext) -> LocalData:
        self.generator = ctx.generator(7)
        return data

    def seeded_transform(self, ctx: HookContext) -> SeededTransform:
        return SeededTransform(self.crop, self.generator)


def test_each_chunk_takes_the_fewest_calls_its_clients_preparations_allow() -> None:
    from fedsim.clients.hooks import build_hook

    (x, y), = _images((10,))
    cpu, model = torch.device("cpu"), build_model("lenet5", 10, 0, 3)

    def client(preparation) -> LockstepClient:  # noqa: ANN001
        return LockstepClient(x, y, {}, torch.Generator(), preparation)

    def prepared(*hooks: Hook) -> object:
        return batch_preparation(list(hooks), _prepared(list(hooks), 0, x, y, model), MEAN, STD)

    offline = prepared(SelectHook(rho=0.5), AugmentHook(transform="affine", mode="copies"))
    assert isinstance(offline, BatchPreparation) and offline.transforms == ()  # normalisation only
    user = prepared(build_hook({"name": "test_lockstep_augment:OwnTransform"}))
    assert not isinstance(user, BatchPreparation)
    seeded_user = prepared(build_hook({"name": "test_lockstep_augment:SeededCrop"}))
    assert isinstance(seeded_user, BatchPreparation) and seeded_user.transforms[0].transform == FlipCrop(padding=2)
    flip_crop, another_flip_crop, affine = (prepared(AugmentHook(transform=name, mode="online"))
                                            for name in ("flip_crop", "flip_crop", "affine"))
    assert isinstance(step_batches([client(None), client(None)], cpu), ReadyBatches)
    assert isinstance(step_batches([client(offline), client(offline)], cpu), CohortBatches)
    assert isinstance(step_batches([client(flip_crop), client(another_flip_crop)], cpu), CohortBatches)
    assert isinstance(step_batches([client(flip_crop), client(affine)], cpu), ClientBatches)  # they apply otherwise
    assert isinstance(step_batches([client(flip_crop), client(user)], cpu), ClientBatches)
    assert isinstance(step_batches([client(flip_crop), client(seeded_user)], cpu), ClientBatches)  # padding 4 vs 2
    assert isinstance(step_batches([client(flip_crop), client(None)], cpu), ClientBatches)
