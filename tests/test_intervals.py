"""bootstrap.mean_interval: exact t intervals against scipy, runs and groups as the units, and the
coverage its method was chosen for (benchmarks/interval_coverage.py's simulation, two cases)."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from subnet_ray.analysis.bootstrap import interval_table, mean_interval

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "interval_coverage.py"


def coverage_bench():
    spec = importlib.util.spec_from_file_location("interval_coverage", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_run_is_the_t_interval_of_its_examples_column_by_column():
    x = np.random.default_rng(0).choice([-10.0, -5, 0, 5, 10, 15], size=(25, 3))
    lo, hi = mean_interval([x])
    for j in range(3):
        want = stats.t.interval(0.95, 24, loc=x[:, j].mean(), scale=stats.sem(x[:, j]))
        assert (lo[j], hi[j]) == pytest.approx(want)
    lo90, hi90 = mean_interval([x], level=0.9)
    assert (lo90 > lo).all() and (hi90 < hi).all()
    np.testing.assert_array_equal(mean_interval([x])[0], lo)  # no random draws: same store, same report


def test_several_runs_are_the_units_whatever_their_examples():
    # Two runs without spread inside: an interval over examples would be [5, 5]; over the runs it is
    # 5 +- t(1) * 7.07 / sqrt(2).
    lo, hi = mean_interval([np.zeros((50, 1)), np.full((30, 1), 10.0)])
    half = stats.t.ppf(0.975, 1) * np.std([0, 10], ddof=1) / np.sqrt(2)
    assert (lo[0], hi[0]) == pytest.approx((5 - half, 5 + half))
    # Only run means matter: spreading the examples around the same means leaves the interval alone.
    g = np.random.default_rng(1)
    runs = [m + g.choice([-5.0, 5.0], size=(40, 1)) for m in (1.0, 4.0, 2.5)]
    runs = [r - r.mean() + m for r, m in zip(runs, (1.0, 4.0, 2.5))]
    lo2, hi2 = mean_interval(runs)
    assert (lo2[0], hi2[0]) == pytest.approx(stats.t.interval(0.95, 2, loc=2.5, scale=stats.sem([1.0, 4.0, 2.5])))
    assert mean_interval([np.empty((0, 1)), *runs])[0] == pytest.approx(lo2)  # an empty run is left out


def test_groups_average_their_runs_first():
    # Training seed 0 has random-mask seeds with means 0 and 2, seed 1 has 6 and 8: the units are 1 and 7.
    runs = [np.full((10, 1), m) for m in (0.0, 2.0, 6.0, 8.0)]
    lo, hi = mean_interval(runs, groups=[0, 0, 1, 1])
    assert (lo[0], hi[0]) == pytest.approx(stats.t.interval(0.95, 1, loc=4.0, scale=stats.sem([1.0, 7.0])))
    assert mean_interval(runs, groups=["s"] * 4)[0] == pytest.approx(mean_interval(runs)[0])  # one group: runs are units
    with pytest.raises(ValueError, match="3 group labels for 4 runs"):
        mean_interval(runs, groups=[0, 0, 1])


def test_undefined_intervals_are_nan_and_no_examples_is_an_error():
    assert np.isnan(mean_interval([np.array([[3.0, 4.0]])])).all()  # one example: no spread to measure
    with pytest.raises(ValueError, match="at least one run with examples"):
        mean_interval([np.empty((0, 2))])


def sat_half(var_runs, df_runs, var_examples, df_examples):
    """Returns max(t(Satterthwaite df) sqrt(sum), t(df_runs) sqrt(var_runs)): mean_interval's half-width with shared examples."""
    total = var_runs + var_examples
    df = total ** 2 / (var_runs ** 2 / df_runs + var_examples ** 2 / df_examples)
    return max(stats.t.ppf(0.975, df) * np.sqrt(total), stats.t.ppf(0.975, df_runs) * np.sqrt(var_runs))


def test_shared_examples_add_their_own_variance():
    # Two runs on the same 5 examples, y = a_run + b_example exactly: the run means differ by 0.2, and
    # every example's effect b is common to both runs, so the spread of the run means misses it.
    b = np.array([0.0, 10, 20, 5, 15])
    runs = [(b + a)[:, None] for a in (0.0, 0.2)]
    t1 = stats.t.ppf(0.975, 1)
    between = np.var([b.mean(), b.mean() + 0.2], ddof=1) / 2
    lo, hi = mean_interval(runs, ids=[range(5), range(5)])
    shared = b.var(ddof=1) / 5  # residual 0: var(b) = MS_examples / runs, each example weighing 1/5
    half = sat_half(between, 1, shared, 4)
    assert half > t1 * np.sqrt(between)  # here the example part outweighs the 1-df floor
    assert (lo[0], hi[0]) == pytest.approx((b.mean() + 0.1 - half, b.mean() + 0.1 + half))
    # Different examples in each run: nothing shared, the runs carry all of it.
    disjoint = mean_interval(runs, ids=[range(5), range(5, 10)])
    assert disjoint[0] == pytest.approx(mean_interval(runs)[0]) and disjoint[0][0] == pytest.approx(b.mean() + 0.1 - t1 * np.sqrt(between))
    # Runs that share 4 of their 5 examples: examples 0 and 5 weigh 1/10 in the mean, 1-4 weigh 2/10.
    shifted = [(np.r_[b, 7.0] + a)[lo:lo + 5, None] for a, lo in ((0.0, 0), (-1.2, 1))]  # run means 10 and 10.2
    core = np.stack([s[[1, 2, 3, 4], 0] if i == 0 else s[[0, 1, 2, 3], 0] for i, s in enumerate(shifted)])
    var_b = core.mean(axis=0).var(ddof=1) * 2 / 2  # MS_examples / runs, residual 0
    means = [s.mean() for s in shifted]
    lo3, hi3 = mean_interval(shifted, ids=[range(0, 5), range(1, 6)])
    half = sat_half(np.var(means, ddof=1) / 2, 1, (2 * 0.1 ** 2 + 4 * 0.2 ** 2) * var_b, 3)
    assert half > t1 * np.sqrt(np.var(means, ddof=1) / 2)  # the weights, not the floor, set it
    assert (lo3[0], hi3[0]) == pytest.approx((np.mean(means) - half, np.mean(means) + half))
    # Pure noise within runs (no example effect): the added part is ~0, the interval that of the runs.
    g = np.random.default_rng(4)
    noise = [g.normal(m, 5.0, size=(200, 1)) for m in (0.0, 1.0, 2.0, 3.0)]
    with_ids = mean_interval(noise, ids=[range(200)] * 4)
    assert with_ids[1][0] - with_ids[0][0] == pytest.approx(np.subtract(*mean_interval(noise)[::-1])[0], rel=0.1)


def test_interval_table_drops_runs_and_their_group_labels_where_a_language_is_missing():
    import pandas as pd

    def frame(lang_values):
        idx = pd.MultiIndex.from_tuples([(l, f"t{i}") for l, vs in lang_values.items() for i in range(len(vs))],
                                        names=["test_language", "test_id"])
        return pd.DataFrame({"a": [v for vs in lang_values.values() for v in vs]}, index=idx)

    frames = [frame({"a": [0.0, 6.0, 3.0], "b": [1.0, 3.0]}), frame({"a": [1.0, 7.0, 4.0]}), frame({"a": [1.0, 7.0, 4.0], "b": [5.0, 7.0]})]
    lo, hi = interval_table(frames, ["a", "b"], groups=[0, 0, 1])
    ids = [["t0", "t1", "t2"]] * 3
    want_a = mean_interval([f.xs("a", level="test_language").to_numpy() for f in frames], groups=[0, 0, 1], ids=ids)
    want_b = mean_interval([frames[0].xs("b", level="test_language").to_numpy(), frames[2].xs("b", level="test_language").to_numpy()],
                           ids=[["t0", "t1"]] * 2)
    assert (lo.at["a", "a"], hi.at["a", "a"]) == pytest.approx((want_a[0][0], want_a[1][0]))
    assert (lo.at["b", "a"], hi.at["b", "a"]) == pytest.approx((want_b[0][0], want_b[1][0]))
    assert hi.at["a", "a"] - lo.at["a", "a"] > np.subtract(*mean_interval(
        [f.xs("a", level="test_language").to_numpy() for f in frames], groups=[0, 0, 1])[::-1])[0]  # shared examples widen it


@pytest.mark.parametrize("runs, between_sd", [(1, 0.0), (3, 3.0)])
def test_coverage_holds_95_percent_where_the_old_bootstrap_did_not(runs, between_sd):
    # 1000 repetitions: Monte Carlo sd 0.007 around 0.95. The old two-level bootstrap covers 0.89 with
    # 3 runs at sd 3 here (issue 23: 0.79) and 0.81 at sd 5, so a return to it, or any interval that
    # ignores the spread between runs, fails here.
    bench = coverage_bench()
    got = bench.coverage("new", runs, 60, between_sd, "independent", reps=1000)
    assert 0.93 <= got["coverage"] <= 0.97, got
    if runs > 1:
        assert bench.coverage("old", runs, 60, 5.0, "independent", reps=200)["coverage"] < 0.9


def test_coverage_holds_when_runs_share_their_test_examples():
    # Random-mask seeds compared with one full model on the same test examples: each example's own
    # effect is common to the runs. The run means alone (no ids) cover 0.73 here; with the shared
    # examples' variance it holds (0.947 in the benchmark at 1000 repetitions).
    bench = coverage_bench()
    got = bench.coverage("new", 3, 60, 0.0, "shared_baseline", reps=400)
    assert 0.93 <= got["coverage"] <= 0.98, got
    assert bench.coverage("t_runs", 3, 60, 0.0, "shared_baseline", reps=400)["coverage"] < 0.85


def test_verdicts_are_right_at_their_stated_rates_on_planted_truth():
    """benchmarks/verdict_rates.py's simulation, fewer repetitions: a zero correlation or change is called
    inconclusive ~95% of the time, a real one holds, and a 5-language claim with no effect anywhere is falsely
    contradicted at 1 - 0.975^5 (the rule documented in verdicts.py)."""
    spec = importlib.util.spec_from_file_location("verdict_rates", BENCH.with_name("verdict_rates.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    null = bench.correlation_rates(0.0, 20, 1500)
    assert 0.93 <= null["inconclusive"] <= 0.97 and abs(null["holds"] - null["contradicted"]) < 0.02
    strong = bench.correlation_rates(0.6, 20, 600)
    assert strong["holds"] > 0.78 and strong["contradicted"] == 0.0
    assert bench.correlation_rates(-0.6, 20, 300)["contradicted"] > 0.75
    one = bench.change_rates(0.0, 100, 1, 1500)
    assert 0.93 <= one["inconclusive"] <= 0.97
    five = bench.change_rates(0.0, 100, 5, 800)
    assert five["holds"] == 0.0 and abs(five["contradicted"] - (1 - 0.975 ** 5)) < 0.04
    assert bench.change_rates(5.0, 100, 5, 300)["holds"] > 0.95
    pooled = bench.pooled_change_rates(0.0, 100, 3, 1000)
    assert 0.93 <= pooled["inconclusive"] <= 0.975
