"""Classification metrics and seeded client sampling."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.outputs.metrics import confusion_matrix, macro_scores
from fedsim.core.sampling import EVALUATE, TRAIN, sample_clients, sample_size


def test_confusion_matrix_rows_are_true_labels() -> None:
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 1, 0])
    matrix = confusion_matrix(y_true, y_pred, 3)
    assert matrix.tolist() == [[1, 2, 0], [0, 2, 0], [1, 0, 0]]
    scores = macro_scores(matrix)
    # precision: class0 1/2, class1 2/4, class2 0 (never predicted) -> mean 1/3
    assert scores["precision"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    # recall: 1/3, 2/2, 0/1
    assert scores["recall"] == pytest.approx((1 / 3 + 1 + 0) / 3)
    f1_0 = 2 * 0.5 * (1 / 3) / (0.5 + 1 / 3)
    f1_1 = 2 * 0.5 * 1 / 1.5
    assert scores["f1"] == pytest.approx((f1_0 + f1_1 + 0) / 3)


def test_sample_size_fraction_or_count() -> None:
    assert sample_size(100, 0.1, 0) == 10
    assert sample_size(100, 0.001, 0) == 1  # m = max(floor(C K), 1)
    assert sample_size(100, 0.1, 25) == 25


def test_sampling_depends_only_on_seed_round_purpose() -> None:
    a = sample_clients(7, 3, TRAIN, 100, 10)
    assert a == sample_clients(7, 3, TRAIN, 100, 10)
    assert len(set(a)) == 10 and a == sorted(a)
    assert a != sample_clients(7, 4, TRAIN, 100, 10)
    assert a != sample_clients(8, 3, TRAIN, 100, 10)
    assert a != sample_clients(7, 3, EVALUATE, 100, 10)
    # over many rounds every client gets picked
    seen = set().union(*(sample_clients(0, r, TRAIN, 50, 5) for r in range(200)))
    assert seen == set(range(50))
