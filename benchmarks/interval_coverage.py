"""Coverage of the report's 95% intervals of a mean change, old (bootstrap) method against new.

Simulates what `shares.compare_shares` gives per test example: the change in a training
language's share of the top-20 positives, a multiple of 5 points. Test example x has an
in-language rate q0_x ~ Beta(2, 6) (mean 25%); the baseline model's top 20 hold
F_x ~ Bin(20, q0_x) in-language examples; the compared variant (run r) replaces J_x of them
(J ~ Bin(20, 0.2), or Bin(20, 0.9) for the 15% of examples a mask reshuffles: a heavy tail)
by new ones, in-language at a rate q1 ~ Beta(4 m, 4 (1 - m)) of mean m = q0 moved toward 1
(or 0) so that run r's mean change is 2 + u_r, u_r ~ N(0, between_run_sd): a random-mask or
training seed's own shift (clipped where m would leave [0, 1]; the true mean is then E[run
mean], by quadrature). change = 5 * (new in-language - replaced in-language); per-example sd
about 10 points.

Designs (how the runs relate), as in the report:
- independent: each run its own test examples (the issue's table);
- shared_items: the same test items in every run (q0_x, J_x and the quantile of q1 are the
  item's), each run its own baseline model (F drawn per run): the pooled report's training seeds;
- shared_baseline: also the same baseline top 20 (F_x): random-mask seeds against one full
  model (Fig 3's random mean, Fig 6). The demo's random-SFT seeds (n ~ 32) measure sd 8-15
  points for the example effect, 4-9 residual, 0-6 between seeds; here about 7, 7, 0-5.

Prints one JSON line per (method, case): method, design, runs, examples, between_run_sd,
coverage (share of repetitions whose interval holds the true mean), mean_width, reps, seconds.

    python benchmarks/interval_coverage.py [--reps 1000] [--methods old,new,...] [--quick | --full]
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
CONC = 4.0  # concentration of q1 around its mean: how differently the variant treats each example
DESIGNS = ("independent", "shared_items", "shared_baseline")

# (runs, examples, between_run_sd, design): the table first, then one run down to 20 examples
# and 2-10 runs over the between-run sd range, in each design.
CASES = ([(1, n, 0.0, "independent") for n in (20, 60, 200)] + [(r, 60, 3.0, "independent") for r in (2, 3, 5)]
         + [(r, 60, sd, d) for d in DESIGNS for r, sd in ((2, 0.0), (2, 5.0), (3, 0.0), (3, 1.0), (5, 0.0), (10, 0.0),
                                                            (10, 5.0))]
         + [(r, 60, 3.0, d) for d in DESIGNS[1:] for r in (2, 3, 5)] + [(3, 20, 3.0, d) for d in DESIGNS])
FULL = ([(1, n, 0.0, "independent") for n in (20, 60, 200)]
        + [(r, 60, sd, d) for d in DESIGNS for r in (2, 3, 5, 10) for sd in (0.0, 1.0, 3.0, 5.0)]
        + [(3, 20, 3.0, d) for d in DESIGNS] + [(10, 200, 1.0, d) for d in DESIGNS])
QUICK = [(1, 60, 0.0, "independent"), (3, 60, 3.0, "independent"), (3, 60, 3.0, "shared_baseline")]


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


def simulate(reps: int, runs: int, examples: int, between_sd: float, design: str, g: np.random.Generator) -> np.ndarray:
    """Returns [reps, runs, examples] per-example changes (points, multiples of 5); example i is the same item in every run unless independent."""
    shape = (reps, runs, examples)
    item = shape if design == "independent" else (reps, 1, examples)
    d = _shift(MEAN + between_sd * g.standard_normal((reps, runs)))[..., None]
    q0 = np.broadcast_to(g.beta(2, 6, size=item), shape)
    f = np.broadcast_to(g.binomial(K, q0[:, :1] if design == "shared_baseline" else q0), shape)
    j = np.broadcast_to(g.binomial(K, np.where(g.random(item) < HEAVY, P_HEAVY, P_LIGHT)), shape)
    m = np.clip(np.where(d >= 0, q0 + d * (1 - q0), q0 * (1 + d)), 1e-9, 1 - 1e-9)
    q1 = stats.beta.ppf(np.broadcast_to(g.random(item), shape), CONC * m, CONC * (1 - m))  # E[q1] = m exactly
    dropped = g.hypergeometric(f, K - f, j)  # in-language among the J replaced
    return STEP * (g.binomial(j, q1) - dropped).astype(float)


def example_ids(runs: int, examples: int, design: str) -> list[np.ndarray]:
    """Returns each run's example ids: shared unless the design is independent."""
    return [np.arange(examples) + (r * examples if design == "independent" else 0) for r in range(runs)]


# ----------------------------------------------------------------------------- methods: x [reps, runs, n] -> lo, hi [reps]

def old(x: np.ndarray, level: float, ids: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The report's method before issue 23: percentile interval of the (two-level) bootstrap."""
    out = [percentile_interval(bootstrap_means([r[:, None] for r in rep], seed=i), level) for i, rep in enumerate(x)]
    return np.array([o[0][0] for o in out]), np.array([o[1][0] for o in out])


def new(x: np.ndarray, level: float, ids: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The report's method now: `bootstrap.mean_interval` with the runs' example ids."""
    out = [mean_interval([r[:, None] for r in rep], level, ids=ids) for rep in x]
    return np.array([o[0][0] for o in out]), np.array([o[1][0] for o in out])


def t_runs(x: np.ndarray, level: float, ids: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Candidate: `mean_interval` without ids (t over run means only, blind to shared examples)."""
    out = [mean_interval([r[:, None] for r in rep], level) for rep in x]
    return np.array([o[0][0] for o in out]), np.array([o[1][0] for o in out])


def satterthwaite(x: np.ndarray, level: float, ids: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Candidate: var_units + var_examples (as `mean_interval`) with one Satterthwaite df instead of a t per part."""
    from subnet_ray.analysis.bootstrap import _shared_examples

    out = []
    for rep in x:
        arrays = [r[:, None] for r in rep]
        k = len(arrays)
        means = np.array([a.mean() for a in arrays])
        a_var = means.var(ddof=1) / k
        parts = _shared_examples([list(i) for i in ids], arrays, [[i] for i in range(k)])
        b_var, b_df = (float(parts[0][0][0]), parts[0][1]) if parts else (0.0, 1)
        total = a_var + b_var
        df = total ** 2 / (a_var ** 2 / (k - 1) + b_var ** 2 / b_df) if total > 0 else k - 1
        half = stats.t.ppf((1 + level) / 2, df) * np.sqrt(total)
        out.append((means.mean() - half, means.mean() + half))
    return np.array([o[0] for o in out]), np.array([o[1] for o in out])


def t_floor(x: np.ndarray, level: float, ids: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
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


def bca(x: np.ndarray, level: float, ids: list[np.ndarray], n_boot: int = 2000) -> tuple[np.ndarray, np.ndarray]:
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


def studentized(x: np.ndarray, level: float, ids: list[np.ndarray], n_boot: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Candidate for one run: bootstrap-t (percentiles of the resampled t statistic)."""
    y = x[:, 0, :]
    n = y.shape[1]
    m, se = y.mean(axis=1), y.std(axis=1, ddof=1) / np.sqrt(n)
    mb, sb = _one_run_boot(x, n_boot, np.random.default_rng(0))
    tb = (mb - m[:, None]) / np.maximum(sb / np.sqrt(n), 1e-9)
    lo_q, hi_q = np.quantile(tb, [(1 - level) / 2, (1 + level) / 2], axis=1)
    return m - hi_q * se, m - lo_q * se


METHODS = {"old": old, "new": new, "t_runs": t_runs, "satterthwaite": satterthwaite, "t_floor": t_floor, "bca": bca, "studentized": studentized}
ONE_RUN_ONLY = {"bca", "studentized"}
SEVERAL_RUNS_ONLY = {"t_runs", "t_floor", "satterthwaite"}


def coverage(method: str, runs: int, examples: int, between_sd: float, design: str, reps: int, level: float = 0.95,
             seed: int = 0) -> dict:
    """Returns the JSON record of one method on one case (the same simulated data for every method)."""
    g = np.random.default_rng([seed, runs, examples, int(10 * between_sd), DESIGNS.index(design)])
    x = simulate(reps, runs, examples, between_sd, design, g)
    lo, hi = METHODS[method](x, level, example_ids(runs, examples, design))
    mu = true_mean(between_sd)
    return {"method": method, "design": design, "runs": runs, "examples": examples, "between_run_sd": between_sd,
            "coverage": round(float(np.mean((lo <= mu) & (mu <= hi))), 4), "mean_width": round(float(np.mean(hi - lo)), 3),
            "reps": reps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=1000, help="repetitions per case (MC sd of 0.95: 0.007 at 1000)")
    parser.add_argument("--methods", default="old,new", help=f"comma-separated, of {sorted(METHODS)}")
    parser.add_argument("--quick", action="store_true", help="only the cases the test guards")
    parser.add_argument("--full", action="store_true", help="every runs x sd x design combination")
    args = parser.parse_args()
    for runs, examples, sd, design in QUICK if args.quick else FULL if args.full else CASES:
        for method in args.methods.split(","):
            if (method in ONE_RUN_ONLY and runs > 1) or (method in SEVERAL_RUNS_ONLY and runs == 1):
                continue
            start = time.perf_counter()
            rec = coverage(method, runs, examples, sd, design, args.reps)
            print(json.dumps({**rec, "seconds": round(time.perf_counter() - start, 2)}), flush=True)


if __name__ == "__main__":
    main()
