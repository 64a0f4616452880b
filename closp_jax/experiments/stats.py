"""Paired significance tests over queries (and seeds): difference, confidence interval, p-value.

Two systems A and B scored on the same queries give per-query figures a[q], b[q] (e.g. nDCG@1000
of each query). The unit of resampling is the query: the queries are a sample from the population
of queries a user could ask, and both systems answer the same ones (paired data).

* `paired_bootstrap`: resamples queries with replacement. Confidence interval of the mean
  difference mean(a - b) by the percentile or BCa method (Efron & Tibshirani 1993, ch. 13-14);
  p-value of "no difference" from the null-shifted bootstrap (the differences centred on 0,
  p = (1 + #{|mean*| >= |observed|}) / (B + 1)).
* `paired_randomization`: the sign-flip permutation test: under "A and B are exchangeable" each
  query's difference keeps its size and has either sign. Exhaustive over all 2^n sign vectors when
  that is at most `n_resamples` (exact p-value), Monte-Carlo otherwise. p-values follow scipy's
  `permutation_test` convention (two-sided = 2 x the smaller one-sided p, clipped at 1; the
  Monte-Carlo estimate counts the observed statistic, (count + 1) / (B + 1); values within a
  relative 100 x float64 epsilon of the observed statistic count as equal to it).
* `paired_comparison`: both: difference, the bootstrap's interval and one of the two p-values.

Seeds. `a` and `b` may be [n_queries] (one run each) or [n_seeds, n_queries] (one row per
training seed; A and B may have different numbers of seeds; NaN marks a seed that lacks a query).
`seeds="mean"` (the default) first averages each query's figure over that system's seeds and then
tests over queries: the seeds only make each query's figure less noisy, and the test's units stay
the queries. `seeds="hierarchical"` (bootstrap only) resamples queries and then, for every
resampled query, each system's seeds with replacement, so the interval also carries the
seed-to-seed variation (wider when runs disagree). The randomization test always flips whole
queries (all seeds of a query together), which is the same for both settings.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
from scipy import special

from closp_jax.errors import UserError

SEED_POOLING = ("mean", "hierarchical")
CI_METHODS = ("bca", "percentile")
ALTERNATIVES = ("two-sided", "greater", "less")
_TIE_RTOL = 100 * np.finfo(np.float64).eps  # as scipy.stats.permutation_test
_BATCH = 1024  # resamples drawn per step (part of the seed -> result contract)


class StatsInputError(UserError, ValueError):
  """The per-query figures given to a test cannot be paired or tested (shape, NaN, too few)."""


@dataclasses.dataclass(frozen=True)
class PairedResult:
  """One paired test. `difference` = mean over queries of a - b (after pooling seeds);
  `ci` = (low, high) at `confidence_level` (None for a test without one); `p_value` of the null
  "no difference" against `alternative`; `n_queries`; `resamples` = bootstraps or sign vectors
  drawn (2^n when `exact`)."""

  difference: float
  ci: tuple[float, float] | None
  p_value: float
  n_queries: int
  method: str
  resamples: int
  exact: bool
  confidence_level: float
  alternative: str = "two-sided"

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


# --------------------------------------------------------------------------- inputs


def _as_runs(x, name: str) -> np.ndarray:
  arr = np.asarray(x, np.float64)
  if arr.ndim == 1:
    arr = arr[None, :]
  if arr.ndim != 2 or arr.shape[1] == 0 or arr.shape[0] == 0:
    raise StatsInputError(
      f"{name} must be per-query figures, shape [n_queries] or [n_seeds, n_queries]; got shape {np.shape(x)}"
    )
  if np.isinf(arr).any():
    raise StatsInputError(f"{name} holds an infinite value")
  if np.isnan(arr).all(axis=0).any():
    q = int(np.flatnonzero(np.isnan(arr).all(axis=0))[0])
    raise StatsInputError(f"{name}: query {q} has no finite figure in any seed")
  return arr


def _paired_runs(a, b) -> tuple[np.ndarray, np.ndarray]:
  ra, rb = _as_runs(a, "a"), _as_runs(b, "b")
  if ra.shape[1] != rb.shape[1]:
    raise StatsInputError(f"a and b must score the same queries: {ra.shape[1]} vs {rb.shape[1]} queries")
  if ra.shape[1] < 2:
    raise StatsInputError("a paired test needs at least 2 queries")
  return ra, rb


def query_differences(a, b) -> np.ndarray:
  """[n_queries] per-query difference of the seed means, mean_seeds(a) - mean_seeds(b)."""
  ra, rb = _paired_runs(a, b)
  return np.nanmean(ra, axis=0) - np.nanmean(rb, axis=0)


def _check_common(confidence_level: float, alternative: str, n_resamples: int) -> None:
  if not 0.0 < float(confidence_level) < 1.0:
    raise StatsInputError(f"confidence_level={confidence_level} must lie strictly between 0 and 1")
  if alternative not in ALTERNATIVES:
    raise StatsInputError(f"alternative={alternative!r}: expected one of {', '.join(ALTERNATIVES)}")
  if int(n_resamples) < 1:
    raise StatsInputError(f"n_resamples={n_resamples} must be at least 1")


def _p_from_null(null: np.ndarray, observed: float, alternative: str, adjustment: int) -> float:
  """scipy.stats.permutation_test's p-value rule over a null distribution."""
  gamma = abs(_TIE_RTOL * observed)
  total = len(null) + adjustment
  less = (np.count_nonzero(null <= observed + gamma) + adjustment) / total
  greater = (np.count_nonzero(null >= observed - gamma) + adjustment) / total
  p = {"less": less, "greater": greater, "two-sided": 2 * min(less, greater)}[alternative]
  return float(min(max(p, 0.0), 1.0))


# --------------------------------------------------------------------------- randomization


def sign_flip_null(
  d: np.ndarray, n_resamples: int = 10_000, *, rng=0, exact: bool | None = None
) -> tuple[np.ndarray, bool]:
  """(null distribution of mean(s * d) over sign vectors s, exact). Exhaustive over all 2^n sign
  vectors when `exact` is True, or None and 2^n <= n_resamples; else n_resamples random vectors."""
  d = np.asarray(d, np.float64)
  n = d.size
  if exact is None:
    exact = n < 63 and 2**n <= int(n_resamples)
  if exact:
    if n > 24:
      raise StatsInputError(
        f"an exhaustive sign-flip test over {n} queries needs 2^{n} sign vectors; pass exact=False (Monte-Carlo)"
      )
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    return signs @ d / n, True
  gen = np.random.default_rng(rng)
  null = np.empty(int(n_resamples))
  for start in range(0, len(null), _BATCH):
    m = min(_BATCH, len(null) - start)
    signs = gen.integers(0, 2, (m, n)) * 2.0 - 1.0
    null[start : start + m] = signs @ d / n
  return null, False


def paired_randomization(
  a, b, *, n_resamples: int = 10_000, rng=0, exact: bool | None = None, alternative: str = "two-sided"
) -> PairedResult:
  """Sign-flip randomization test of mean(a - b) = 0 over queries (seeds pooled by their mean)."""
  _check_common(0.95, alternative, n_resamples)
  d = query_differences(a, b)
  observed = float(d.mean())
  null, exact = sign_flip_null(d, n_resamples, rng=rng, exact=exact)
  p = _p_from_null(null, observed, alternative, 0 if exact else 1)
  return PairedResult(observed, None, p, d.size, "randomization", len(null), exact, float("nan"), alternative)


# --------------------------------------------------------------------------- bootstrap


def _bootstrap_means(
  ra: np.ndarray, rb: np.ndarray, n_resamples: int, gen: np.random.Generator, seeds: str
) -> np.ndarray:
  """[B] mean difference of each bootstrap resample of the queries (and, hierarchically, seeds)."""
  n = ra.shape[1]
  out = np.empty(n_resamples)
  if seeds == "mean":
    d = np.nanmean(ra, axis=0) - np.nanmean(rb, axis=0)
    for start in range(0, n_resamples, _BATCH):
      m = min(_BATCH, n_resamples - start)
      out[start : start + m] = d[gen.integers(0, n, (m, n))].mean(axis=1)
    return out

  def seed_means(runs: np.ndarray, queries: np.ndarray) -> np.ndarray:
    s = runs.shape[0]
    if s == 1:
      return runs[0, queries]
    picks = gen.integers(0, s, (s,) + queries.shape)  # seeds drawn per resampled query
    return np.nanmean(runs[picks, queries[None]], axis=0)

  for start in range(0, n_resamples, _BATCH):
    m = min(_BATCH, n_resamples - start)
    queries = gen.integers(0, n, (m, n))
    diff = seed_means(ra, queries) - seed_means(rb, queries)
    out[start : start + m] = np.nanmean(diff, axis=1)
  return out


def interval_from_bootstrap(
  theta_b: np.ndarray,
  theta_hat: float,
  jackknife: np.ndarray | None,
  confidence_level: float = 0.95,
  method: str = "bca",
) -> tuple[float, float]:
  """(low, high) two-sided interval from a bootstrap distribution `theta_b`.

  percentile: the alpha/2 and 1 - alpha/2 quantiles of theta_b (linear interpolation).
  bca: the quantiles at the bias-corrected, accelerated levels
  alpha_i = Phi(z0 + (z0 + z_i) / (1 - a (z0 + z_i))) with z0 = Phi^-1(share of theta_b below
  theta_hat, ties counting half) and a = sum(U^3) / (6 (sum U^2)^1.5), U = the jackknife
  influence values (n - 1)(mean(jackknife) - jackknife) (Efron & Tibshirani 1993, eq. 14.15).
  """
  if method not in CI_METHODS:
    raise StatsInputError(f"method={method!r}: expected one of {', '.join(CI_METHODS)}")
  alpha = (1.0 - float(confidence_level)) / 2.0
  levels = np.array([alpha, 1.0 - alpha])
  if method == "bca":
    if jackknife is None:
      raise StatsInputError("the BCa interval needs the jackknife values of the statistic")
    below = np.count_nonzero(theta_b < theta_hat) + np.count_nonzero(theta_b <= theta_hat)
    z0 = special.ndtri(below / (2.0 * len(theta_b)))
    jk = np.asarray(jackknife, np.float64)
    u = (len(jk) - 1) * (jk.mean() - jk)
    den = np.sum(u**2)
    accel = np.sum(u**3) / (6.0 * den**1.5) if den > 0 else 0.0
    z = special.ndtri(levels)
    levels = special.ndtr(z0 + (z0 + z) / (1.0 - accel * (z0 + z)))
    if not np.all(np.isfinite(levels)):  # degenerate: every resample equal (e.g. all differences 0)
      return float(theta_hat), float(theta_hat)
  low, high = np.quantile(theta_b, levels)
  return float(low), float(high)


def paired_bootstrap(
  a,
  b,
  *,
  n_resamples: int = 10_000,
  confidence_level: float = 0.95,
  method: str = "bca",
  seeds: str = "mean",
  rng=0,
  alternative: str = "two-sided",
) -> PairedResult:
  """Paired bootstrap over queries: mean(a - b), its interval and the null-shifted p-value.

  seeds: "mean" (each query's seed mean, then queries) or "hierarchical" (resample queries, then
  each system's seeds per query). The BCa acceleration uses the jackknife over queries of the
  seed-mean differences in both cases.
  """
  _check_common(confidence_level, alternative, n_resamples)
  if seeds not in SEED_POOLING:
    raise StatsInputError(f"seeds={seeds!r}: expected one of {', '.join(SEED_POOLING)}")
  if method not in CI_METHODS:
    raise StatsInputError(f"method={method!r}: expected one of {', '.join(CI_METHODS)}")
  ra, rb = _paired_runs(a, b)
  d = np.nanmean(ra, axis=0) - np.nanmean(rb, axis=0)
  n = d.size
  observed = float(d.mean())
  gen = np.random.default_rng(rng)
  theta_b = _bootstrap_means(ra, rb, int(n_resamples), gen, seeds)
  jackknife = (d.sum() - d) / (n - 1)
  ci = interval_from_bootstrap(theta_b, observed, jackknife, confidence_level, method)
  # Null-shifted bootstrap: the same resamples of the differences centred on 0.
  null = theta_b - observed
  gamma = abs(_TIE_RTOL * observed)
  if alternative == "two-sided":
    extreme = np.count_nonzero(np.abs(null) >= abs(observed) - gamma)
  elif alternative == "greater":
    extreme = np.count_nonzero(null >= observed - gamma)
  else:
    extreme = np.count_nonzero(null <= observed + gamma)
  p = (extreme + 1) / (len(null) + 1)
  return PairedResult(
    observed,
    ci,
    float(min(p, 1.0)),
    n,
    f"bootstrap-{method}-{seeds}",
    len(theta_b),
    False,
    float(confidence_level),
    alternative,
  )


def paired_comparison(
  a,
  b,
  *,
  test: str = "randomization",
  n_resamples: int = 10_000,
  confidence_level: float = 0.95,
  method: str = "bca",
  seeds: str = "mean",
  rng=0,
) -> PairedResult:
  """Difference mean(a - b), the paired bootstrap's interval, and the p-value of `test`
  ('randomization': the sign-flip test, exact for small n; 'bootstrap': the null-shifted one)."""
  if test not in ("randomization", "bootstrap"):
    raise StatsInputError(f"test={test!r}: expected 'randomization' or 'bootstrap'")
  boot = paired_bootstrap(
    a, b, n_resamples=n_resamples, confidence_level=confidence_level, method=method, seeds=seeds, rng=rng
  )
  if test == "bootstrap":
    return boot
  perm = paired_randomization(a, b, n_resamples=n_resamples, rng=rng)
  return dataclasses.replace(
    perm, ci=boot.ci, confidence_level=boot.confidence_level, method=f"randomization+{boot.method}"
  )
