"""Values of the small metrics (specroute.metrics) on inputs whose answer is known by hand."""

from __future__ import annotations

import pytest
import torch

from specroute.metrics import effective_rank, latent_variance, spearman


def test_spearman_with_ties_equals_the_hand_computed_value():
    # average ranks (0-based): a -> [0, 1.5, 1.5, 3, 4], b -> [1, 0, 4, 2.5, 2.5]; deviations from the
    # mean rank 2: [-2, -.5, -.5, 1, 2] and [-1, -2, 2, .5, .5]; sum of products 3.5, sums of squares 9.5
    a = torch.tensor([1.0, 2.0, 2.0, 3.0, 5.0])
    b = torch.tensor([2.0, 1.0, 4.0, 3.0, 3.0])
    assert spearman(a, b) == pytest.approx(3.5 / 9.5, abs=1e-12)
    assert spearman(b, a) == pytest.approx(3.5 / 9.5, abs=1e-12)


def test_spearman_of_monotone_maps_is_plus_or_minus_one():
    x = torch.tensor([0.3, -1.0, 2.5, 0.0, 7.0, 1.1])
    assert spearman(x, x.exp()) == pytest.approx(1.0, abs=1e-12)  # any increasing map: ranks equal
    assert spearman(x, -x ** 3) == pytest.approx(-1.0, abs=1e-12)


def test_spearman_of_a_constant_is_zero():
    assert spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 4.0, 4.0])) == 0.0


def test_effective_rank_of_an_isotropic_set_is_full():
    eye = torch.eye(4)
    z = torch.cat([eye, -eye])  # centred already; four equal singular values
    assert effective_rank(z) == pytest.approx(4.0, rel=1e-6)


def test_effective_rank_of_rank_one_latents_is_one():
    t = torch.randn(32, 1, generator=torch.Generator().manual_seed(0))
    v = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    assert effective_rank(t @ v + 5.0) == pytest.approx(1.0, rel=1e-5)  # one line (offset removed by centring)


def test_effective_rank_and_variance_of_equal_rows_are_zero():
    z = torch.ones(8, 4) * 3.0
    assert effective_rank(z) == 0.0
    assert latent_variance(z) == 0.0
