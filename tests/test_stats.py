"""closp_jax.experiments.stats against scipy.stats (bootstrap, permutation_test) on the same data."""

import numpy as np
import pytest
from scipy import stats as sps

from closp_jax.errors import UserError
from closp_jax.experiments import stats


def _mean_diff(x, y, axis=-1):
  return np.mean(x - y, axis=axis)


def _pair(n, shift, seed, noise=0.1):
  rng = np.random.default_rng(seed)
  b = rng.uniform(0.2, 0.8, n)
  a = b + shift + rng.normal(0, noise, n)
  return a, b


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_exhaustive_sign_flip_equals_scipy_exactly(alternative):
  a, b = _pair(11, 0.03, seed=1)
  ours = stats.paired_randomization(a, b, n_resamples=10_000, alternative=alternative)
  ref = sps.permutation_test(
    (a, b), _mean_diff, permutation_type="samples", vectorized=True, n_resamples=np.inf, alternative=alternative
  )
  assert ours.exact and ours.resamples == 2**11
  assert ours.p_value == ref.pvalue  # deterministic: the same number
  assert ours.difference == pytest.approx(float(ref.statistic), abs=1e-15)
  null, _ = stats.sign_flip_null(a - b, 10_000)
  np.testing.assert_allclose(np.sort(null), np.sort(ref.null_distribution), atol=1e-15)


def test_exhaustive_with_ties_and_zero_differences_equals_scipy():
  # Repeated magnitudes and zero differences make many null values equal to the observed one.
  b = np.linspace(0.1, 0.9, 12)
  a = b + np.array([0.1, -0.1, 0.1, 0.0, 0.2, -0.2, 0.1, 0.0, 0.1, -0.1, 0.3, 0.1])
  ours = stats.paired_randomization(a, b)
  ref = sps.permutation_test((a, b), _mean_diff, permutation_type="samples", vectorized=True, n_resamples=np.inf)
  assert ours.exact
  assert ours.p_value == ref.pvalue


def test_monte_carlo_sign_flip_within_monte_carlo_error_of_scipy():
  a, b = _pair(40, 0.015, seed=2)
  n = 20_000
  ours = stats.paired_randomization(a, b, n_resamples=n, rng=3)
  ref = sps.permutation_test((a, b), _mean_diff, permutation_type="samples", vectorized=True, n_resamples=n, rng=4)
  assert not ours.exact and ours.resamples == n
  p = ref.pvalue
  assert 0.01 < p < 0.99  # a case where the Monte-Carlo error matters
  assert abs(ours.p_value - p) < 5 * np.sqrt(2 * p * (1 - p) / n)


@pytest.mark.parametrize("method,scipy_method", [("bca", "BCa"), ("percentile", "percentile")])
def test_interval_arithmetic_equals_scipy_on_scipys_bootstrap_distribution(method, scipy_method):
  a, b = _pair(25, 0.02, seed=5)
  ref = sps.bootstrap((a, b), _mean_diff, paired=True, vectorized=True, n_resamples=5000, method=scipy_method, rng=6)
  d = a - b
  jackknife = (d.sum() - d) / (len(d) - 1)
  low, high = stats.interval_from_bootstrap(ref.bootstrap_distribution, float(d.mean()), jackknife, 0.95, method)
  assert low == pytest.approx(ref.confidence_interval.low, rel=1e-12, abs=1e-14)
  assert high == pytest.approx(ref.confidence_interval.high, rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("method,scipy_method", [("bca", "BCa"), ("percentile", "percentile")])
def test_bootstrap_interval_within_monte_carlo_error_of_scipy(method, scipy_method):
  a, b = _pair(30, 0.02, seed=7)
  n = 20_000
  ours = stats.paired_bootstrap(a, b, n_resamples=n, method=method, rng=8)
  ref = sps.bootstrap((a, b), _mean_diff, paired=True, vectorized=True, n_resamples=n, method=scipy_method, rng=9)
  se = ref.standard_error
  # Monte-Carlo sd of a 2.5% quantile of B = 20,000 draws is about 0.02 standard errors.
  assert abs(ours.ci[0] - ref.confidence_interval.low) < 0.15 * se
  assert abs(ours.ci[1] - ref.confidence_interval.high) < 0.15 * se
  assert ours.difference == pytest.approx(np.mean(a - b), abs=1e-15)


def test_bootstrap_p_value_matches_scipy_bootstrap_of_centred_differences():
  a, b = _pair(30, 0.012, seed=10)
  n = 20_000
  ours = stats.paired_bootstrap(a, b, n_resamples=n, rng=11)
  d = a - b
  centred = d - d.mean()
  ref = sps.bootstrap((centred,), np.mean, vectorized=True, n_resamples=n, method="percentile", rng=12)
  p_ref = (np.count_nonzero(np.abs(ref.bootstrap_distribution) >= abs(d.mean())) + 1) / (n + 1)
  assert 0.01 < p_ref < 0.99
  assert abs(ours.p_value - p_ref) < 5 * np.sqrt(2 * p_ref * (1 - p_ref) / n)


def test_no_difference_gives_calibrated_p_values_and_covering_intervals():
  rng = np.random.default_rng(13)
  p_rand, covered = [], 0
  trials = 150
  for t in range(trials):
    base = rng.uniform(0.2, 0.8, 30)
    a = base + rng.normal(0, 0.1, 30)  # both systems: the same truth plus independent noise
    b = base + rng.normal(0, 0.1, 30)
    p_rand.append(stats.paired_randomization(a, b, n_resamples=999, rng=t).p_value)
    ci = stats.paired_bootstrap(a, b, n_resamples=1000, rng=t).ci
    covered += ci[0] <= 0.0 <= ci[1]
  p_rand = np.array(p_rand)
  assert 0.01 <= np.mean(p_rand < 0.05) <= 0.11
  assert 0.35 < np.mean(p_rand) < 0.65  # p is uniform under the null
  assert 0.88 <= covered / trials <= 0.99


def test_identical_systems():
  a = np.linspace(0, 1, 20)
  r = stats.paired_comparison(a, a.copy())
  assert r.difference == 0.0 and r.p_value == 1.0 and r.ci == (0.0, 0.0)


def test_large_difference_is_detected():
  a, b = _pair(30, 0.2, seed=14, noise=0.05)
  r = stats.paired_comparison(a, b, n_resamples=5000)
  # no random sign vector reaches the observed mean: two-sided p = 2 x (0 + 1) / (5000 + 1)
  assert r.p_value == pytest.approx(2 / 5001)
  assert 0.15 < r.ci[0] < r.difference < r.ci[1] < 0.25
  boot = stats.paired_bootstrap(a, b, n_resamples=5000)
  assert boot.p_value == pytest.approx(1 / 5001)
  one_sided = stats.paired_randomization(a, b, alternative="less")
  assert one_sided.p_value > 0.99


def test_seed_pooling_by_mean_is_the_test_of_seed_means():
  rng = np.random.default_rng(15)
  a = rng.uniform(0, 1, (3, 20))
  b = rng.uniform(0, 1, (2, 20))  # a different number of seeds is fine
  pooled = stats.paired_bootstrap(a, b, n_resamples=2000, rng=1)
  plain = stats.paired_bootstrap(a.mean(0), b.mean(0), n_resamples=2000, rng=1)
  assert pooled.ci == pytest.approx(plain.ci, abs=1e-12)
  assert pooled.p_value == plain.p_value
  assert stats.paired_randomization(a, b).p_value == stats.paired_randomization(a.mean(0), b.mean(0)).p_value


def test_hierarchical_pooling():
  rng = np.random.default_rng(16)
  truth = rng.uniform(0.3, 0.7, 25)
  # one seed each: the hierarchical bootstrap is the plain one (same draws)
  a1, b1 = truth[None] + 0.02 + rng.normal(0, 0.05, 25), truth[None]
  flat = stats.paired_bootstrap(a1[0], b1[0], n_resamples=2000, seeds="mean", rng=2)
  single = stats.paired_bootstrap(a1, b1, n_resamples=2000, seeds="hierarchical", rng=2)
  assert single.n_queries == flat.n_queries == 25
  assert single.ci == pytest.approx(flat.ci, abs=1e-12)
  # seeds that disagree widen the hierarchical interval, not the seed-mean one
  a = truth[None] + 0.02 + rng.normal(0, 0.15, (4, 25))
  b = truth[None] + rng.normal(0, 0.15, (4, 25))
  wide = stats.paired_bootstrap(a, b, n_resamples=4000, seeds="hierarchical", rng=3)
  narrow = stats.paired_bootstrap(a, b, n_resamples=4000, seeds="mean", rng=3)
  assert wide.difference == narrow.difference
  assert wide.ci[1] - wide.ci[0] > 1.2 * (narrow.ci[1] - narrow.ci[0])


def test_bad_inputs_are_user_errors():
  with pytest.raises(UserError, match="same queries"):
    stats.paired_randomization(np.zeros(5), np.zeros(6))
  with pytest.raises(UserError, match="at least 2 queries"):
    stats.paired_bootstrap([0.1], [0.2])
  with pytest.raises(UserError, match="seeds="):
    stats.paired_bootstrap(np.zeros(5), np.ones(5), seeds="median")
  with pytest.raises(UserError, match="exhaustive"):
    stats.paired_randomization(np.zeros(30), np.ones(30), exact=True)
  with pytest.raises(UserError, match="no finite figure"):
    stats.paired_randomization(np.array([np.nan, 1, 2]), np.zeros(3))
