"""Coverage of the report's 95% intervals of a mean change, old (bootstrap) method against new.

Simulates what `shares.compare_shares` gives per test example: the change in a training
language's share of the top-20 positives, so a multiple of 5 points. Example i of run r has
J_i of its 20 ranked training examples replaced between the two variants (J ~ Bin(20, 0.2),
or Bin(20, 0.9) for the 15% of examples a mask reshuffles: a heavy tail), and
change_i = 5 * (Bin(J_i, q1) - Bin(J_i, q0)), with q0 ~ Beta(2, 6) the example's in-language
rate (mean 25%) and q1 moved toward 1 (or 0) so that run r's mean change is 2 + u_r,
u_r ~ N(0, between_run_sd) (a random-mask or training seed's own shift; clipped where the
rates would leave [0, 1], the true mean then being E[run mean], computed by quadrature).
Per-example sd is about 8 points, the demo's own.

Prints one JSON line per (method, case): method, runs, examples, between_run_sd, coverage
(share of repetitions whose interval holds the true mean), mean_width, reps.

    python benchmarks/interval_coverage.py [--reps 2000] [--methods old,new,...] [--quick]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy import stats

from subnet_ray.analysis.bootstrap import bootstrap_means, mean_interval, percentile_interval

MEAN = 2.0
K = 20  # top-k: shares move in steps of 100 / K points
STEP = 100 / K
HEAVY, P_HEAVY, P_LIGHT = 0.15, 0.9, 0.2
E_J = K * (HEAVY * P_HEAVY + (1 - HEAVY) * P_LIGHT)  # mean examples replaced per ranking
UP, DOWN = 6 / 8, 2 / 8  # E[1 - q0], E[q0] of Beta(2, 6)

# The table, then 2-10 runs over the between-run sd range, then one run down to 20 examples.
CASES = ([(1, n, 0.0) for n in (20, 60, 200)] + [(r, 60, 3.0) for r in (2, 3, 5)]
         + [(r, 60, sd) for r in (2, 3, 5, 10) for sd in (0.0, 1.0, 5.0)] + [(3, 20, 3.0), (10, 200, 1.0)])
QUICK = [(1, 60, 0.0), (3, 60, 3.0)]


def _shift(run_mean: np.ndarray) -> np.ndarray:
    """Returns the rate shift d giving a run that mean change (d >= 0: q1 = q0 + d(1-q0); d < 0: q1 = q0(1+d))."""
    d = np.where(run_mean >= 0, run_mean / (STEP * E_J * UP), run_mean / (STEP * E_J * DOWN))
    return np.clip(d, -1.0, 1.0)


def _run_mean(d: np.ndarray) -> np.ndarray:
    """Returns the expected change of a run with rate shift d."""
    return STEP * E_J * np.where(d >= 0, d * UP, d * DOWN)


def true_mean(between_sd: float) -> float:
    """Returns E over runs of a run's expected change (MEAN unless clipping bites at large sd)."""
    z, w = np.polynomial.hermite_e.hermegauss(80)
    return float(np.sum(w * _run_mean(_shift(MEAN + between_sd * z))) / np.sum(w))


def simulate(reps: int, runs: int, examples: int, between_sd: float, g: np.random.Generator) -> np.ndarray:
    """Returns [reps, runs, examples] per-example changes (points, multiples of 5)."""
    d = _shift(MEAN + between_sd * g.standard_normal((reps, runs)))[..., None]
    q0 = g.beta(2, 6, size=(reps, runs, examples))
    q1 = np.where(d >= 0, q0 + d * (1 - q0), q0 * (1 + d))
    j = g.binomial(K, np.where(g.random((reps, runs, examples)) < HEAVY, P_HEAVY, P_LIGHT))
    return STEP * (g.binomial(j, q1) - g.binomial(j, q0)).astype(float)


# ----------------------------------------------------------------------------- methods: x [reps, runs, n] -> lo, hi [reps]

def old(x: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """The report's method before issue 23: percentile interval of the (two-level) bootstrap."""
    out = [percentile_interval(bootstrap_means([r[:, None] for r in rep], seed=i), level) for i, rep in enumerate(x)]
    return np.array([o[0][0] for o in out]), np.array([o[1][0] for o in out])


def new(x: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """The report's method now: `bootstrap.mean_interval`."""
    out = [mean_interval([r[:, None] for r in rep], level) for rep in x]
    return np.array([o[0][0] for o in out]), np.array([o[1][0] for o in out])


def t_floor(x: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Candidate: variance of the mean max(s_runs^2, pooled example variance / n) / R, df R-1 or R(n-1) by which wins."""
    reps, runs, n = x.shape
    m = x.mean(axis=2)
    between = m.var(axis=1, ddof=1) if runs > 1 else np.zeros(reps)
    within = x.var(axis=2, ddof=1).mean(axis=1) / n
    use_between = between > within
    var = np.maximum(between, within) / runs
    q = np.where(use_between, stats.t.ppf((1 + level) / 2, max(runs - 1, 1)), stats.t.ppf((1 + level) / 2, runs * (n - 1)))
    half = q * np.sqrt(var)
    return m.mean(axis=1) - half, m.mean(axis=1) + half


def _one_run_boot(x: np.ndarray, n_boot: int, g: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Returns [reps, n_boot] bootstrap means and sds of one run's examples (row counts per replicate, as bootstrap.py)."""
    y = x[:, 0, :]
    n = y.shape[1]
    means, sds = np.empty((len(y), n_boot)), np.empty((len(y), n_boot))
    for i, row in enumerate(y):
        draws = g.integers(0, n, size=(n_boot, n)) + (np.arange(n_boot) * n)[:, None]
        counts = np.bincount(draws.ravel(), minlength=n_boot * n).reshape(n_boot, n)
        means[i] = counts @ row / n
        sds[i] = np.sqrt(np.maximum(counts @ row ** 2 / n - means[i] ** 2, 0) * n / (n - 1))
    return means, sds


def bca(x: np.ndarray, level: float, n_boot: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Candidate for one run: bias-corrected and accelerated bootstrap (acceleration from the jackknife)."""
    y = x[:, 0, :]
    n = y.shape[1]
    mb, _ = _one_run_boot(x, n_boot, np.random.default_rng(0))
    m = y.mean(axis=1)
    z0 = stats.norm.ppf(np.clip((mb < m[:, None]).mean(axis=1) + 0.5 * (mb == m[:, None]).mean(axis=1), 1e-6, 1 - 1e-6))
    jack = (y.sum(axis=1, keepdims=True) - y) / (n - 1)
    d = jack.mean(axis=1, keepdims=True) - jack
    a = (d ** 3).sum(axis=1) / (6 * np.maximum((d ** 2).sum(axis=1), 1e-12) ** 1.5)
    out = []
    for z in stats.norm.ppf([(1 - level) / 2, (1 + level) / 2]):
        p = stats.norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))
        out.append(np.array([np.quantile(b, q) for b, q in zip(mb, p)]))
    return out[0], out[1]


def studentized(x: np.ndarray, level: float, n_boot: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Candidate for one run: bootstrap-t (percentiles of the resampled t statistic)."""
    y = x[:, 0, :]
    n = y.shape[1]
    m, se = y.mean(axis=1), y.std(axis=1, ddof=1) / np.sqrt(n)
    mb, sb = _one_run_boot(x, n_boot, np.random.default_rng(0))
    tb = (mb - m[:, None]) / np.maximum(sb / np.sqrt(n), 1e-9)
    lo_q, hi_q = np.quantile(tb, [(1 - level) / 2, (1 + level) / 2], axis=1)
    return m - hi_q * se, m - lo_q * se


METHODS = {"old": old, "new": new, "t_floor": t_floor, "bca": bca, "studentized": studentized}
ONE_RUN_ONLY = {"bca", "studentized"}


def coverage(method: str, runs: int, examples: int, between_sd: float, reps: int, level: float = 0.95,
             seed: int = 0) -> dict:
    """Returns the JSON record of one method on one case (the same simulated data for every method)."""
    x = simulate(reps, runs, examples, between_sd, np.random.default_rng([seed, runs, examples, int(10 * between_sd)]))
    lo, hi = METHODS[method](x, level)
    mu = true_mean(between_sd)
    return {"method": method, "runs": runs, "examples": examples, "between_run_sd": between_sd,
            "coverage": round(float(np.mean((lo <= mu) & (mu <= hi))), 4), "mean_width": round(float(np.mean(hi - lo)), 3),
            "reps": reps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=2000, help="repetitions per case (MC sd of 0.95: 0.005 at 2000)")
    parser.add_argument("--methods", default="old,new", help=f"comma-separated, of {sorted(METHODS)}")
    parser.add_argument("--quick", action="store_true", help="only the two cases the test guards")
    args = parser.parse_args()
    for runs, examples, sd in QUICK if args.quick else CASES:
        for method in args.methods.split(","):
            if method in ONE_RUN_ONLY and runs > 1:
                continue
            start = time.perf_counter()
            rec = coverage(method, runs, examples, sd, args.reps)
            print(json.dumps({**rec, "seconds": round(time.perf_counter() - start, 2)}), flush=True)


if __name__ == "__main__":
    main()
