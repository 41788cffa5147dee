"""Image augmentations applied to a whole batch at once, each sample with its own random parameters.

The ``augment`` hook used to call a torchvision transform once per sample in a Python loop, after
seeding torch's global generator: on a NIID-Bench round (10 clients x 5,000 CIFAR-10 images, 10
local epochs, online flip + crop) that loop took as long as the training itself. Here each
transform is split in two:

* :meth:`BatchTransform.draw` draws every sample's parameters as tensors from the client's own
  generator (seeded by (seed, round, client)), on the CPU, so they do not depend on the device;
* :meth:`BatchTransform.apply` applies them to the uint8 batch (N, C, H, W) on its device, in a
  few tensor operations: crop offsets by indexing a zero-padded batch, flips by reversing the
  column index of the flipped samples, rotations and shifts by one ``affine_grid`` /
  ``grid_sample`` call, RandAugment op by op on the sub-batches that drew each op.

The parameters follow torchvision's ``transforms.v2`` distributions (the tests pin them): for
``RandomCrop(size, padding=4)`` the offsets are uniform over the (2 * 4 + 1)^2 = 81 positions, for
``RandomHorizontalFlip`` the flip rate is 0.5, for ``RandomAffine(degrees=45, translate=(0.2,
0.2))`` the angle is uniform in [-45, 45] degrees and the shifts are uniform in +-0.2 of the
side, rounded to whole pixels, for ``RandAugment(num_ops, magnitude)`` each op is one of its 14
with equal probability and a signed op is negated with probability 0.5. Given the same
parameters, :meth:`apply` computes what torchvision computes for one image (same inverse affine
matrix, same sampling grid, nearest neighbour, zero fill; RandAugment's ops are torchvision's
own kernels); the random draws themselves differ from the per-sample loop's, so runs with the
``augment`` hook changed when this replaced it (fedsim 0.2.0's random streams).

:meth:`BatchTransform.apply` treats every sample on its own: each parameter tensor has one row
per sample, and no sample's output depends on another's (RandAugment's sub-batch of an (op, sign)
pair holds whichever samples drew it, and the statistics of its ``AutoContrast``, ``Equalize``
and ``Contrast`` kernels are per image). So the
vectorized engine draws each client's parameters from that client's generator
(:class:`SeededTransform`), joins them with :func:`concat_params` and applies them to all its
clients' batches in one call, with the same result for every sample, bit for bit, as the
client's own call (:mod:`fedsim.clients.lockstep.batches`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

Params = dict[str, torch.Tensor]


class BatchTransform(ABC):
    """A random augmentation of a uint8 image batch whose per-sample parameters are drawn as tensors."""

    @abstractmethod
    def draw(self, n: int, height: int, width: int, generator: torch.Generator) -> Params:
        """The random parameters of ``n`` samples of ``height`` x ``width``, from ``generator`` (CPU)."""

    @abstractmethod
    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        """``images`` (N, C, H, W) uint8 transformed with ``params``; a new tensor on their device.

        Sample ``i``'s output depends only on sample ``i`` and row ``i`` of every parameter.
        """

    @abstractmethod
    def settings(self) -> tuple:
        """What :meth:`apply` depends on besides the parameters: equal settings apply alike."""

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not len(images):
            return images
        return self.apply(images, self.draw(len(images), images.shape[-2], images.shape[-1], generator))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.settings() == self.settings()

    def __hash__(self) -> int:
        return hash((type(self), self.settings()))


@dataclass(frozen=True, eq=False)
class SeededTransform:
    """A batch transform and the generator one client's parameters for it are drawn from."""

    transform: BatchTransform
    generator: torch.Generator

    def draw(self, n: int, height: int, width: int) -> Params:
        """The parameters of the client's next ``n`` samples (advances its generator)."""
        return self.transform.draw(n, height, width, self.generator)


def concat_params(draws: list[Params]) -> Params:
    """Several draws of one transform as one, for the concatenation of their batches (in that order)."""
    return {key: torch.cat([params[key] for params in draws]) for key in draws[0]}


class FlipCrop(BatchTransform):
    """``RandomCrop(size, padding)`` (zero padding, cropped back to the input's size) then ``RandomHorizontalFlip``.

    Parameters: ``top`` and ``left`` offsets into the padded image, each uniform in
    ``0 .. 2 * padding``, and ``flip`` (probability 0.5). Applied as one ``gather`` from the
    padded batch: row ``top + r`` and column ``left + c`` (``left + W - 1 - c`` when flipped).
    """

    def __init__(self, padding: int = 4) -> None:
        self.padding = padding

    def settings(self) -> tuple:
        return (self.padding,)

    def draw(self, n: int, height: int, width: int, generator: torch.Generator) -> Params:
        offsets = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=generator)
        flip = torch.rand(n, generator=generator) < 0.5
        return {"top": offsets[:, 0], "left": offsets[:, 1], "flip": flip}

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        n, channels, height, width = images.shape
        device = images.device
        p = self.padding
        padded = F.pad(images, (p, p, p, p)).view(n, channels, -1)
        rows = params["top"].to(device)[:, None] + torch.arange(height, device=device)
        forward = torch.arange(width, device=device)
        columns = torch.where(params["flip"].to(device)[:, None], forward.flip(0), forward) + params["left"].to(device)[:, None]
        flat = (rows[:, :, None] * (width + 2 * p) + columns[:, None, :]).view(n, 1, height * width)
        return padded.gather(2, flat.expand(n, channels, height * width)).view(n, channels, height, width)


class Affine(BatchTransform):
    """``RandomAffine(degrees, translate)`` with torchvision's defaults: nearest neighbour, zero fill,
    rotation about the image centre.

    Parameters: ``angle`` uniform in [-degrees, degrees] and whole-pixel shifts ``tx``, ``ty``,
    each ``round(U(-translate * side, translate * side))``. Applied with one sampling grid per
    sample, built as torchvision's ``affine`` builds it (its inverse matrix, pixel-centred base
    grid, ``grid_sample(mode="nearest", padding_mode="zeros", align_corners=False)``).
    """

    def __init__(self, degrees: float = 45.0, translate: tuple[float, float] = (0.2, 0.2)) -> None:
        self.degrees, self.translate = float(degrees), translate

    def settings(self) -> tuple:
        return (self.degrees, tuple(self.translate))

    def draw(self, n: int, height: int, width: int, generator: torch.Generator) -> Params:
        angle = torch.empty(n).uniform_(-self.degrees, self.degrees, generator=generator)
        max_dx, max_dy = self.translate[0] * width, self.translate[1] * height
        tx = torch.empty(n).uniform_(-max_dx, max_dx, generator=generator).round()
        ty = torch.empty(n).uniform_(-max_dy, max_dy, generator=generator).round()
        return {"angle": angle, "tx": tx, "ty": ty}

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        n, _, height, width = images.shape
        device = images.device
        rotation = params["angle"].double() * (math.pi / 180)
        tx, ty = params["tx"].double(), params["ty"].double()
        cos, sin = rotation.cos(), rotation.sin()
        # torchvision's inverse affine matrix for centre (0, 0), scale 1, no shear
        theta = torch.stack([torch.stack([cos, sin, -cos * tx - sin * ty], 1),
                             torch.stack([-sin, cos, sin * tx - cos * ty], 1)], 1)
        theta = theta.to(device=device, dtype=torch.float32)
        base = torch.empty(1, height, width, 3, device=device)
        base[..., 0].copy_(torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, width, device=device))
        base[..., 1].copy_(torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, height, device=device)[:, None])
        base[..., 2].fill_(1)
        scale = torch.tensor([0.5 * width, 0.5 * height], device=device)
        grid = base.view(1, height * width, 3).expand(n, -1, -1).bmm(theta.transpose(1, 2) / scale)
        out = F.grid_sample(images.float(), grid.view(n, height, width, 2), mode="nearest",
                            padding_mode="zeros", align_corners=False)
        return out.round_().to(images.dtype)


class RandAugment(BatchTransform):
    """``RandAugment(num_ops, magnitude)`` (Cubuk et al., "RandAugment: Practical automated data
    augmentation with a reduced search space", 2020) as torchvision's ``transforms.v2`` defines it.

    Parameters: for each of the ``num_ops`` rounds, every sample's op (uniform over the 14) and
    sign (a signed op's magnitude is negated with probability 0.5). Applied round by round, one
    call of torchvision's own op kernel per (op, sign) pair that some samples drew, on those
    samples: at most 2 x 14 calls per round instead of one per sample.
    """

    def __init__(self, num_ops: int = 2, magnitude: int = 14) -> None:
        self.num_ops, self.magnitude = num_ops, magnitude
        self._torchvision = v2.RandAugment(num_ops=num_ops, magnitude=magnitude)
        self.ops = list(v2.RandAugment._AUGMENTATION_SPACE)

    def settings(self) -> tuple:
        return (self.num_ops, self.magnitude)

    def draw(self, n: int, height: int, width: int, generator: torch.Generator) -> Params:
        ops = torch.randint(0, len(self.ops), (n, self.num_ops), generator=generator)
        negate = torch.rand(n, self.num_ops, generator=generator) <= 0.5
        return {"ops": ops, "negate": negate}

    def magnitude_of(self, op: str, height: int, width: int, negate: bool) -> float:
        """The magnitude torchvision's RandAugment applies ``op`` with (0 for ops without one)."""
        magnitudes_fn, signed = v2.RandAugment._AUGMENTATION_SPACE[op]
        magnitudes = magnitudes_fn(self._torchvision.num_magnitude_bins, height, width)
        if magnitudes is None:
            return 0.0
        value = float(magnitudes[self.magnitude])
        return -value if signed and negate else value

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        out = images.clone()
        height, width = images.shape[-2:]
        ops, negate = params["ops"].to(images.device), params["negate"].to(images.device)
        for round_ in range(self.num_ops):
            for op_index, op in enumerate(self.ops):
                chosen = ops[:, round_] == op_index
                if op == "Identity" or not bool(chosen.any()):
                    continue
                signed = v2.RandAugment._AUGMENTATION_SPACE[op][1]
                for sign in ((False, True) if signed else (False,)):
                    picked = chosen & (negate[:, round_] == sign) if signed else chosen
                    rows = torch.nonzero(picked).flatten()
                    if not len(rows):
                        continue
                    magnitude = self.magnitude_of(op, height, width, sign)
                    out[rows] = self._torchvision._apply_image_or_video_transform(
                        out[rows], op, magnitude, interpolation=self._torchvision.interpolation,
                        fill=self._torchvision._fill)
        return out


class Sequence(BatchTransform):
    """Several transforms one after the other, each drawing its parameters in turn."""

    def __init__(self, *transforms: BatchTransform) -> None:
        self.transforms = transforms

    def settings(self) -> tuple:
        return self.transforms

    def draw(self, n: int, height: int, width: int, generator: torch.Generator) -> Params:
        return {f"{i}.{key}": value for i, t in enumerate(self.transforms)
                for key, value in t.draw(n, height, width, generator).items()}

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        for i, transform in enumerate(self.transforms):
            prefix = f"{i}."
            images = transform.apply(images, {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)})
        return images
