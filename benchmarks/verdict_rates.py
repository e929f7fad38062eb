"""How often a verdict (analysis/verdicts.py) is right when the truth is known.

Draws data with a planted effect, computes the interval exactly as the report does (stats.correlate's
Fisher-z interval for Fig 8; bootstrap.mean_interval for a change in share), takes the verdict by
the report's rule, and counts holds / inconclusive / contradicted:

- correlation: n ordered language pairs (x, y) bivariate normal with correlation rho (Fig 8:
  5 languages give 20 pairs); rho > 0 is the paper's direction;
- change: per test language, n test examples' paired changes in in-language share, normal with
  sd 10 points (benchmarks/interval_coverage.py measures sd about 10) and mean `effect`; the
  finding for K languages holds only if it holds for each (`verdicts.every`);
- pooled change: `seeds` training seeds on the same test items, each seed's mean shifted by
  N(0, 1.5), an item's own effect N(0, 7) shared by every seed (the pooled report's design).

Prints one JSON line per case: case, truth, n, languages or seeds, holds, inconclusive,
contradicted (shares of the repetitions), reps.

    python benchmarks/verdict_rates.py [--reps 2000]
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from subnet_ray.analysis.bootstrap import mean_interval
from subnet_ray.analysis.stats import correlate
from subnet_ray.analysis.verdicts import CONTRADICTED, HOLDS, INCONCLUSIVE, every, verdict


def _rates(verdicts: list) -> dict[str, float]:
    return {v: round(sum(x == v for x in verdicts) / len(verdicts), 4) for v in (HOLDS, INCONCLUSIVE, CONTRADICTED)}


def correlation_rates(rho: float, n: int, reps: int, seed: int = 0) -> dict[str, float]:
    """Returns the share of each verdict on 'x and y correlate positively' for `reps` samples of n pairs."""
    g = np.random.default_rng(seed)
    cov = [[1.0, rho], [rho, 1.0]]
    out = []
    for _ in range(reps):
        x, y = g.multivariate_normal([0.0, 0.0], cov, size=n).T
        out.append(verdict(*correlate(x, y).pearson_ci))
    return _rates(out)


def change_rates(effect: float, n: int, languages: int, reps: int, seed: int = 0, sd: float = 10.0) -> dict[str, float]:
    """Returns the share of each verdict on 'the change is positive for every language' (Fig 2's rule)."""
    g = np.random.default_rng(seed)
    out = []
    for _ in range(reps):
        per_lang = []
        for _ in range(languages):
            lo, hi = mean_interval([g.normal(effect, sd, size=(n, 1))])
            per_lang.append(verdict(lo[0], hi[0]))
        out.append(every(per_lang))
    return _rates(out)


def pooled_change_rates(effect: float, n: int, seeds: int, reps: int, seed: int = 0) -> dict[str, float]:
    """Returns the share of each verdict on a positive change pooled over training seeds sharing test items."""
    g = np.random.default_rng(seed)
    ids = [np.arange(n)] * seeds
    out = []
    for _ in range(reps):
        item = g.normal(0.0, 7.0, size=n)
        runs = [(effect + g.normal(0.0, 1.5) + item + g.normal(0.0, 7.0, size=n))[:, None] for _ in range(seeds)]
        lo, hi = mean_interval(runs, ids=ids)
        out.append(verdict(lo[0], hi[0]))
    return _rates(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2000)
    a = ap.parse_args()
    for rho in (0.0, 0.3, 0.6):
        for n in (12, 20):
            print(json.dumps({"case": "correlation", "truth": rho, "n": n, **correlation_rates(rho, n, a.reps), "reps": a.reps}), flush=True)
    for effect in (0.0, 2.0, 5.0):
        for langs in (1, 5):
            print(json.dumps({"case": "change", "truth": effect, "n": 100, "languages": langs,
                              **change_rates(effect, 100, langs, a.reps), "reps": a.reps}), flush=True)
    for effect in (0.0, 3.0):
        for seeds in (2, 3, 5):
            print(json.dumps({"case": "pooled_change", "truth": effect, "n": 100, "seeds": seeds,
                              **pooled_change_rates(effect, 100, seeds, a.reps), "reps": a.reps}), flush=True)


if __name__ == "__main__":
    main()
