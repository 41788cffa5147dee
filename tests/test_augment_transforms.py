"""Batched augmentation (fedsim.clients.hooks.transforms) and per-client randomness without global seeding.

The batched transforms replace a per-sample torchvision loop; they need not draw the same
numbers, but their parameters must follow torchvision's distributions (pinned here on many
draws, with bounds of about five standard deviations), and given the same parameters they must
compute what torchvision computes for one image.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from fedsim.clients import training
from fedsim.clients.hooks.augmentation import AugmentHook, build_transform
from fedsim.clients.hooks.transforms import Affine, FlipCrop, RandAugment
from fedsim.core.recipe import SGDRecipe
from fedsim.models import build_model


def _images(n: int, size: int = 32, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def test_crop_offsets_are_uniform_over_the_81_positions_and_half_the_samples_flip() -> None:
    n = 81_000
    params = FlipCrop(padding=4).draw(n, 32, 32, torch.Generator().manual_seed(1))
    positions = (params["top"] * 9 + params["left"]).numpy()
    counts = np.bincount(positions, minlength=81)
    assert len(counts) == 81 and counts.min() > 1000 - 160 and counts.max() < 1000 + 160  # sd ~31.4
    assert params["top"].min() == 0 and params["top"].max() == 8
    assert abs(params["flip"].float().mean().item() - 0.5) < 0.01  # sd ~0.0018


def test_flip_crop_computes_torchvisions_crop_and_flip_for_the_drawn_offsets() -> None:
    images = _images(40)
    transform = FlipCrop(padding=4)
    params = transform.draw(len(images), 32, 32, torch.Generator().manual_seed(2))
    out = transform.apply(images, params)
    assert out.shape == images.shape and out.dtype == torch.uint8
    for i in range(len(images)):
        padded = TF.pad(images[i], [4, 4, 4, 4], fill=0)
        expected = TF.crop(padded, int(params["top"][i]), int(params["left"][i]), 32, 32)
        if params["flip"][i]:
            expected = TF.horizontal_flip(expected)
        assert torch.equal(out[i], expected), i


def test_flip_crop_keeps_other_sizes_and_grayscale() -> None:
    images = _images(6, size=28, channels=1)
    out = build_transform("flip_crop")(images, torch.Generator().manual_seed(3))
    assert out.shape == (6, 1, 28, 28)


def test_affine_angles_and_shifts_stay_in_their_ranges_and_fill_them() -> None:
    n = 50_000
    params = Affine(45, (0.2, 0.2)).draw(n, 32, 32, torch.Generator().manual_seed(4))
    angle = params["angle"]
    assert angle.min() >= -45 and angle.max() <= 45
    assert angle.min() < -44.9 and angle.max() > 44.9
    assert abs(angle.mean().item()) < 0.6  # sd of the mean: 26 / sqrt(50000) ~ 0.12
    assert abs(angle.std().item() - 90 / math.sqrt(12)) < 0.5  # uniform on [-45, 45]
    for shift in (params["tx"], params["ty"]):
        assert torch.equal(shift, shift.round())  # whole pixels, as torchvision rounds them
        assert set(shift.int().tolist()) == set(range(-6, 7))  # round(U(-6.4, 6.4))
        # the end values cover only [-6.4, -5.5) and [5.5, 6.4]: 0.9 / 12.8 of the mass each
        assert abs((shift == 6).float().mean().item() - 0.9 / 12.8) < 0.01


def test_affine_computes_torchvisions_affine_for_the_drawn_parameters() -> None:
    images = _images(30, seed=5)
    transform = Affine(45, (0.2, 0.2))
    params = transform.draw(len(images), 32, 32, torch.Generator().manual_seed(6))
    out = transform.apply(images, params)
    differing = 0
    for i in range(len(images)):
        expected = TF.affine(images[i], angle=float(params["angle"][i]),
                             translate=[int(params["tx"][i]), int(params["ty"][i])], scale=1.0, shear=[0.0, 0.0],
                             interpolation=InterpolationMode.NEAREST, fill=0)
        differing += int((out[i] != expected).any(0).sum())
    # the same grid up to float rounding of the matrix: a nearest-neighbour tie may fall the other way
    assert differing <= 0.001 * 30 * 32 * 32


def test_randaugment_ops_are_equally_likely_and_signs_are_even() -> None:
    n = 28_000
    transform = RandAugment(num_ops=2, magnitude=14)
    params = transform.draw(n, 32, 32, torch.Generator().manual_seed(7))
    assert params["ops"].shape == (n, 2)
    counts = np.bincount(params["ops"].flatten().numpy(), minlength=14)
    assert len(counts) == 14 == len(transform.ops)
    expected = 2 * n / 14  # 4000 each, sd ~61
    assert counts.min() > expected - 320 and counts.max() < expected + 320
    assert abs(params["negate"].float().mean().item() - 0.5) < 0.01


def test_randaugment_applies_torchvisions_op_to_the_samples_that_drew_it() -> None:
    images = _images(60, seed=8)
    transform = RandAugment(num_ops=1, magnitude=14)
    params = transform.draw(len(images), 32, 32, torch.Generator().manual_seed(9))
    out = transform.apply(images, params)
    tv = transform._torchvision
    for i in range(len(images)):
        op = transform.ops[int(params["ops"][i, 0])]
        magnitude = transform.magnitude_of(op, 32, 32, bool(params["negate"][i, 0]))
        expected = tv._apply_image_or_video_transform(images[i : i + 1], op, magnitude,
                                                      interpolation=tv.interpolation, fill=tv._fill)[0]
        assert torch.equal(out[i], expected), (i, op)
    assert not torch.equal(out, images)


@pytest.mark.parametrize("name", ["affine", "flip_crop", "randaugment", "flip_crop_randaugment"])
def test_the_same_generator_gives_the_same_batch_and_the_global_generator_is_untouched(name: str) -> None:
    images = _images(16, seed=10)
    transform = build_transform(name)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = transform(images, torch.Generator().manual_seed(11))
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(456)  # another global state: the same result
    second = transform(images, torch.Generator().manual_seed(11))
    assert torch.equal(first, second) and first.shape == images.shape and first.dtype == torch.uint8
    third = transform(images, torch.Generator().manual_seed(12))
    assert not torch.equal(first, third)


def test_the_augment_hook_transforms_online_batches_and_copies() -> None:
    from fedsim.clients.hooks.base import HookContext, LocalData

    data = LocalData(_images(20, seed=12), torch.arange(20) % 10, 10)
    ctx = HookContext(seed=0, server_round=1, client_id=3, device=torch.device("cpu"), global_model=None,
                      normalize=lambda x: x.float(), build_model=None, recipe=SGDRecipe(), peers=[])
    copies = AugmentHook(transform="flip_crop", mode="copies").prepare(data, ctx)
    assert len(copies) == 40 and torch.equal(copies.images[:20], data.images)
    assert not torch.equal(copies.images[20:], data.images)
    online = AugmentHook(transform="affine", mode="online")
    online.prepare(data, ctx)
    batch = online.transform_batch(data.images[:8], ctx)
    assert batch.shape == (8, 3, 32, 32) and not torch.equal(batch, data.images[:8])


def test_dropout_masks_come_from_the_client_generator_not_the_global_one() -> None:
    """pfl-research's CNN has two dropout layers: training is reproducible whatever the global
    generator holds, leaves it untouched, and another client's generator gives other masks."""
    torch.manual_seed(0)
    start = build_model("pfl_cnn", 10, 0, 3).state_dict()
    x = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.arange(12) % 10
    recipe = SGDRecipe(epochs=1, batch_size=6, lr=0.1)

    def trained(global_seed: int, client: int) -> dict[str, torch.Tensor]:
        model = build_model("pfl_cnn", 10, 0, 3)
        model.load_state_dict(start)
        torch.manual_seed(global_seed)
        before = torch.random.get_rng_state()
        training.train(model, x, y, recipe, training.seeded_generator(0, 1, client))
        assert torch.equal(torch.random.get_rng_state(), before)
        assert type(model.body[5]).forward is torch.nn.Dropout.forward and "forward" not in vars(model.body[5])
        return model.state_dict()

    first, second, other = trained(1, 5), trained(2, 5), trained(1, 6)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_a_random_layer_other_than_dropout_is_refused_by_name() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Dropout2d(0.2), torch.nn.Flatten(),
                                torch.nn.LazyLinear(10))
    with pytest.raises(ValueError, match=r"model layer '1' is a Dropout2d.*allowed random layers: torch.nn.Dropout"):
        training.train(model, torch.randn(4, 3, 8, 8), torch.arange(4), SGDRecipe(batch_size=2),
                       training.seeded_generator(0, 1, 0))
