import random

import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests

from engine import stats


@pytest.mark.parametrize("seed", range(25))
def test_mcnemar_matches_scipy_and_statsmodels(seed):
    rng = random.Random(seed)
    b, c = rng.randint(0, 60), rng.randint(0, 60)
    if b + c == 0:
        b = 1
    got = stats.mcnemar_exact(b, c)
    ref = sm_mcnemar([[rng.randint(0, 100), b], [c, rng.randint(0, 100)]], exact=True)
    assert got.p_two_sided == pytest.approx(min(1.0, ref.pvalue), rel=1e-9)
    assert got.p_degraded == pytest.approx(scipy_stats.binomtest(b, b + c, 0.5, alternative="greater").pvalue, rel=1e-12)
    assert got.p_improved == pytest.approx(scipy_stats.binomtest(c, b + c, 0.5, alternative="greater").pvalue, rel=1e-12)


def test_mcnemar_known_values():
    # 10 losses, 0 wins: P(X >= 10 | n=10) = 2^-10.
    assert stats.mcnemar_exact(10, 0).p_degraded == pytest.approx(2**-10)
    assert stats.mcnemar_exact(10, 0).p_two_sided == pytest.approx(2 * 2**-10)
    assert stats.mcnemar_exact(0, 0).p_two_sided == 1.0
    # Symmetric flips are no evidence either way.
    assert stats.mcnemar_exact(20, 20).p_two_sided == pytest.approx(1.0)


def test_discordant_counts_per_item_direction():
    assert stats.discordant([1, 1, 0, 0, 0.5], [1, 0, 1, 0, 0.25]) == (2, 1)


@pytest.mark.parametrize("seed", range(10))
def test_holm_matches_statsmodels(seed):
    rng = random.Random(seed)
    p = [rng.random() ** 3 for _ in range(rng.randint(1, 9))]
    assert stats.holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]))
