"""Analysis: language shares, deltas, filters and correlations on hand-built rankings with known
answers; figures whose CSVs equal the plotted numbers; the report folder on synthetic results."""
import base64
import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from subnet_ray.analysis import (
    FigureWriter,
    InfluenceResult,
    TaskResults,
    build_report,
    compare_shares,
    correct_under_all,
    correlate,
    language_shares,
    mean_delta,
    parse_variant,
    specialization,
    specialization_by_checkpoint,
    table1,
    write_report,
)
from subnet_ray.subnetworks.masks import cosine_similarity, disabled_heads_table, heads_shared_by, overlap

LANGS = ["a", "b", "c"]


def ranking(test_id, test_language, sign, train_languages, scores, checkpoint=-1):
    """Returns topk rows for one test example, rank 0 first."""
    return [
        {"test_id": test_id, "test_language": test_language, "checkpoint": checkpoint, "sign": sign, "rank": r,
         "train_id": f"{tl}{r}", "train_language": tl, "score": float(s)}
        for r, (tl, s) in enumerate(zip(train_languages, scores))
    ]


def preds(rows):
    return pd.DataFrame(rows, columns=["test_id", "test_language", "label", "pred"])


@pytest.fixture
def hand():
    """Variant A and B on test examples x1, x2 (language a) and x3 (language b); B gets x2 wrong."""
    a = pd.DataFrame(
        ranking("x1", "a", "pos", "aabc", [4, 3, 2, 1]) + ranking("x2", "a", "pos", "abbb", [1, 1, 1, 1])
        + ranking("x3", "b", "pos", "bbbb", [1, 1, 1, 1]) + ranking("x1", "a", "neg", "ccca", [-4, -3, -2, -1])
    )
    b = pd.DataFrame(
        ranking("x1", "a", "pos", "bbba", [1, 1, 1, 1]) + ranking("x2", "a", "pos", "aaaa", [1, 1, 1, 1])
        + ranking("x3", "b", "pos", "bbbc", [1, 1, 1, 1])
    )
    # x4 is classified correctly but has no ranking: it must not count.
    pa = preds([("x1", "a", 1, 1), ("x2", "a", 0, 0), ("x3", "b", 1, 1), ("x4", "a", 1, 1)])
    pb = preds([("x1", "a", 1, 1), ("x2", "a", 0, 1), ("x3", "b", 1, 1), ("x4", "a", 1, 1)])
    return {"A": InfluenceResult(a, pa), "B": InfluenceResult(b, pb)}


def test_shares_are_mean_of_per_example_percentages(hand):
    s = language_shares(hand["A"].topk, LANGS)
    # x1: a 2/4, b 1/4, c 1/4; x2: a 1/4, b 3/4 -> mean over language a's two examples.
    assert s.loc["a"].tolist() == [37.5, 50.0, 12.5]
    assert s.loc["b"].tolist() == [0.0, 100.0, 0.0]
    assert specialization(s).to_dict() == {"a": 37.5, "b": 100.0}
    neg = language_shares(hand["A"].topk, LANGS, sign="neg")
    assert neg.loc["a"].tolist() == [25.0, 0.0, 75.0]


def test_score_weighted_shares(hand):
    s = language_shares(hand["A"].topk, LANGS, weighted=True)
    # x1 weights a 4+3, b 2, c 1 of 10; x2 equal scores -> as counts.
    assert np.allclose(s.loc["a"], [(70 + 25) / 2, (20 + 75) / 2, (10 + 0) / 2])
    neg = language_shares(hand["A"].topk, LANGS, sign="neg", weighted=True)
    assert np.allclose(neg.loc["a"], [10.0, 0.0, 90.0])  # |scores|: c 4+3+2, a 1


def test_correct_under_all_keeps_examples_both_rank_and_classify_correctly(hand):
    keep = correct_under_all([hand["A"], hand["B"]])
    assert sorted(keep.tolist()) == [("a", "x1"), ("b", "x3")]
    assert sorted(correct_under_all([hand["A"]]).tolist()) == [("a", "x1"), ("a", "x2"), ("b", "x3")]


def test_delta_uses_only_jointly_correct_examples(hand):
    c = compare_shares(hand, "A", "B", LANGS)
    # Only x1 for language a: A (50, 25, 25) - B (25, 75, 0); x3 for b: A (0, 100, 0) - B (0, 75, 25).
    assert c.delta.loc["a"].tolist() == [25.0, -50.0, 25.0]
    assert c.delta.loc["b"].tolist() == [0.0, 25.0, -25.0]
    assert c.n.to_dict() == {"a": 1, "b": 1}
    assert specialization(c.delta).to_dict() == {"a": 25.0, "b": 25.0}
    # Averaging a comparison with its mirror image gives zero everywhere.
    assert (mean_delta([c, compare_shares(hand, "B", "A", LANGS)]).to_numpy() == 0).all()


def test_specialization_by_checkpoint(hand):
    topk = pd.DataFrame(ranking("x1", "a", "pos", "aabc", [4, 3, 2, 1], checkpoint=1)
                        + ranking("x1", "a", "pos", "abbb", [4, 3, 2, 1], checkpoint=2))
    res = InfluenceResult(topk, preds([("x1", "a", 1, 1)]))
    spec = specialization_by_checkpoint(res, LANGS)
    assert spec.to_dict("records") == [{"test_language": "a", "checkpoint": 1, "specialization": 50.0},
                                       {"test_language": "a", "checkpoint": 2, "specialization": 25.0}]


def test_correlations_equal_hand_computed_values():
    # x = 1..4, y = 1,3,2,4: sum dx*dy = 4, sum dx^2 = sum dy^2 = 5 -> r = 0.8; t = 0.8*sqrt(2)/0.6,
    # and with 2 degrees of freedom P(|T| > t) = 1 - t/sqrt(t^2 + 2) = 0.2. Ranks equal values.
    c = correlate([1, 2, 3, 4], [1, 3, 2, 4])
    assert c.n == 4
    assert c.pearson_r == pytest.approx(0.8) and c.pearson_p == pytest.approx(0.2)
    assert c.spearman_r == pytest.approx(0.8) and c.spearman_p == pytest.approx(0.2)
    # Monotone but not linear: Spearman 1, Pearson below 1; NaN pairs dropped.
    c = correlate([1, 2, 3, np.nan], [1, 4, 27, 5])
    assert c.n == 3 and c.spearman_r == pytest.approx(1.0) and c.pearson_r < 1
    undefined = correlate([1, 1, 1, 1], [1, 2, 3, 4])
    assert np.isnan(undefined.pearson_r) and undefined.n == 4 and undefined.as_dict()["pearson_r"] is None


def test_mask_statistics_are_asymmetric_where_sparsity_differs():
    masks = {"de": np.array([[1, 1, 0, 0]], bool), "en": np.array([[1, 1, 1, 1]], bool)}
    counts, pct = overlap(masks)
    assert pct.at["de", "en"] == 100.0 and pct.at["en", "de"] == 50.0  # the paper's Fig 13 reading
    assert counts.to_numpy().tolist() == [[2, 2], [2, 4]]
    assert cosine_similarity(masks["de"], masks["en"]) == pytest.approx(2 / np.sqrt(8))
    assert heads_shared_by(masks).tolist() == [[2, 2, 1, 1]]
    assert disabled_heads_table({"toy": masks}).at["toy", "de"] == 2


def test_variant_names_parse_and_unknown_names_fail():
    assert parse_variant("sft+intersect:de-en").pair == ("de", "en")
    assert parse_variant("full+random:3").seed == 3
    assert parse_variant("full+subopt:ko").language == "ko"
    with pytest.raises(ValueError, match=r"unknown variant name 'sft\+subnetwork'"):
        parse_variant("sft+subnetwork")


# ----------------------------------------------------------------------------- synthetic sweep


def make_synthetic_results(task="toy", languages=("de", "en", "ko"), *, layers=2, heads=4, n_test=6, n_train=8,
                           k=5, epochs=2, seeds=(0, 1), variants=None, seed=0) -> TaskResults:
    """Returns a TaskResults with every variant (or those named), rankings biased towards in-language data."""
    rng = np.random.default_rng(seed)
    langs = list(languages)
    masks = {lang: rng.random((layers, heads)) < 0.7 for lang in langs}
    random_masks = {s: {lang: rng.permutation(m.ravel()).reshape(layers, heads) for lang, m in masks.items()} for s in seeds}
    names = variants or (["full", "full+subnet", *[f"full+random:{s}" for s in seeds], f"full+subopt:{langs[1]}",
                          f"full+subopt:{langs[2]}", "sft+subnet", f"sft+union:{langs[0]}-{langs[1]}",
                          f"sft+intersect:{langs[0]}-{langs[1]}", *[f"random-sft:{s}" for s in seeds]])
    train = [(f"{lang}-tr{i}", lang) for lang in langs for i in range(n_train)]
    influence, acc_rows = {}, []
    for name in names:
        v = parse_variant(name)
        tested = [langs[0]] if v.kind in ("full+subopt", "full+random") else list(v.pair or langs)
        bias = rng.uniform(1.5, 4.0)
        rows, pred_rows = [], []
        for a in tested:
            for i in range(n_test):
                tid = f"{a}-te{i}"
                label = int(rng.integers(2))
                pred_rows.append((tid, a, label, label if rng.random() > 0.2 else 1 - label))
                for ckpt in [-1, *range(1, epochs + 1)]:
                    for sign in ("pos", "neg"):
                        p = np.array([bias if tl == a else 1.0 for _, tl in train])
                        pick = rng.choice(len(train), size=k, replace=False, p=p / p.sum())
                        scores = np.sort(rng.uniform(0.1, 1.0, k))[::-1] * (1 if sign == "pos" else -1)
                        rows += ranking(tid, a, sign, [train[j][1] for j in pick], scores, ckpt)
                        for r, j in enumerate(pick):
                            rows[-k + r]["train_id"] = train[j][0]
        influence[name] = InfluenceResult(pd.DataFrame(rows), preds(pred_rows))
        acc_rows += [(name, lang, e, split, float(rng.uniform(0.5, 0.9)))
                     for lang in langs for e in range(1, epochs + 1) for split in ("dev", "test")]
    curves = pd.DataFrame([(lang, s, s, 0.8 - 0.02 * s * (1 + j), 0.8) for j, lang in enumerate(langs) for s in range(4)],
                          columns=["language", "step", "heads_disabled", "accuracy", "full_accuracy"])
    accuracy = pd.DataFrame(acc_rows, columns=["variant", "language", "epoch", "split", "accuracy"])
    return TaskResults(task, langs, masks, random_masks, curves, accuracy, influence)


def assert_csv_equals_plotted(record):
    """Reads the CSV back and rebuilds, independently, what each panel must have drawn."""
    data = pd.read_csv(record.csv, keep_default_na=True)
    spec = record.spec
    groups = [("main", data)] if spec["panel"] is None else [(str(p), data[data[spec["panel"]] == p])
                                                              for p in pd.unique(data[spec["panel"]])]
    if spec["kind"] == "heatmap":
        assert set(record.plotted) == {name for name, _ in groups}
        for name, d in groups:
            grid = d.pivot(index=spec["row"], columns=spec["col"], values=spec["value"])
            grid = grid.reindex(index=pd.unique(d[spec["row"]]), columns=pd.unique(d[spec["col"]])).to_numpy(float)
            np.testing.assert_allclose(record.plotted[name], grid, rtol=0, atol=1e-12, equal_nan=True)
    elif spec["kind"] == "scatter":
        for name, d in groups:
            np.testing.assert_allclose(record.plotted[name], d[[spec["x"], spec["y"]]].to_numpy(float), atol=1e-12)
    elif spec["kind"] == "lines":
        expected = {f"{name}/{h}": dh[[spec["x"], spec["y"]]].to_numpy(float)
                    for name, d in groups for h, dh in ((h, d[d[spec["hue"]] == h]) for h in pd.unique(d[spec["hue"]]))}
        assert set(record.plotted) == set(expected)
        for key, xy in expected.items():
            np.testing.assert_allclose(record.plotted[key], xy, atol=1e-12)
    else:
        np.testing.assert_allclose(record.plotted["main"], data[spec["y"]].to_numpy(float), atol=1e-12, equal_nan=True)


def test_writer_csv_equals_imshow_array(tmp_path):
    w = FigureWriter(tmp_path)
    data = pd.DataFrame({"sign": ["pos"] * 4 + ["neg"] * 4, "test_language": list("aabb") * 2,
                         "train_language": list("abab") * 2, "delta_pct": [1.5, -2.0, 0.25, np.nan, 3, 4, 5, 6]})
    rec = w.heatmap(2, "t", "x", data, row="test_language", col="train_language", value="delta_pct", panel="sign",
                    diverging=True, caption="c")
    assert rec.plotted["pos"][0].tolist() == [1.5, -2.0] and np.isnan(rec.plotted["pos"][1, 1])
    assert rec.plotted["neg"].tolist() == [[3, 4], [5, 6]]
    assert_csv_equals_plotted(rec)
    assert rec.png.name == "fig02_t_x.png" and rec.png.stat().st_size > 0


EXPECTED = ["fig02_toy_subnet_vs_full", "fig03_toy_baselines_de", "fig04_toy_sft_vs_full", "fig05_toy_sft_shares",
            "fig06_toy_random_sft_vs_full", "fig07_toy_specialization_vs_accuracy", "fig08_toy_mask_similarity",
            "fig08_toy_similarity_vs_positive_influence", "fig09_toy_layer_similarity_correlation",
            "fig10_toy_specialization_epochs", "fig11_toy_full_shares", "fig12_toy_heads_shared",
            "fig13_toy_mask_overlap", "fig16_toy_overlap_vs_negative_influence",
            "fig18_toy_random_sft_specialization_epochs", "fig19_toy_composition_de-en", "pruning_toy_curves"]


@pytest.fixture
def report(synthetic_report):
    """(results, folder, summary, records) of the full synthetic report: the session's shared one (conftest)."""
    return synthetic_report


def test_report_has_every_figure_with_csv_equal_to_plot(report):
    t, out, summary, records = report
    assert sorted(r.name for r in records) == sorted(EXPECTED)
    for r in records:
        assert (out / f"{r.name}.png").exists() and (out / f"{r.name}.csv").exists()
        assert_csv_equals_plotted(r)
    assert {s["figure"] for s in summary["skipped"]} == {"fig14", "fig15", "fig17"}  # merged into 13 and 10
    assert not any(s["reason"].startswith("error") for s in summary["skipped"])


def test_report_numbers_agree_with_the_shares_api(report):
    t, out, summary, _ = report
    fig02 = pd.read_csv(out / "fig02_toy_subnet_vs_full.csv")
    pos = fig02[fig02["sign"] == "most positive"].pivot(index="test_language", columns="train_language", values="delta_pct")
    delta = compare_shares(t.influence, "full+subnet", "full", t.languages).delta
    np.testing.assert_allclose(pos.loc[delta.index, delta.columns].to_numpy(), delta.to_numpy(), atol=1e-12)
    record = summary["comparisons"]["toy"]["full+subnet vs full"]
    assert record["in_language_pos_change"] == pytest.approx({lang: delta.at[lang, lang] for lang in t.languages}, abs=1e-6)
    n = compare_shares(t.influence, "full+subnet", "full", t.languages).n
    assert record["n_test_examples"] == {"full+subnet": n.to_dict()}
    # Every baseline and composition is a recorded comparison too.
    assert {"full+random:0 vs full", "full+subopt:en vs full", "sft+intersect:de-en vs full",
            "sft+subnet vs full", "random-sft (mean of 2 seeds) vs full"} <= set(summary["comparisons"]["toy"])
    # Fig 6 is the mean over seeds of each seed's own jointly-correct comparison.
    fig06 = pd.read_csv(out / "fig06_toy_random_sft_vs_full.csv")
    pos6 = fig06[fig06["sign"] == "most positive"].set_index(["test_language", "train_language"])["delta_pct"]
    seeds = [compare_shares(t.influence, f"random-sft:{s}", "full", t.languages).delta for s in (0, 1)]
    assert pos6[("en", "ko")] == pytest.approx((seeds[0].at["en", "ko"] + seeds[1].at["en", "ko"]) / 2)
    # Fig 3's random baseline: the mean over random-mask seeds, with its interval over examples and seeds
    rand = summary["comparisons"]["toy"]["full+random (mean of 2 seeds) vs full"]
    each = [compare_shares(t.influence, f"full+random:{s}", "full", t.languages).delta.at["de", "de"] for s in (0, 1)]
    assert rand["in_language_pos_change"]["de"] == pytest.approx(np.mean(each), abs=1e-6)
    lo, hi = rand["in_language_pos_change_ci"]["de"]
    assert lo <= np.mean(each) <= hi


def test_report_mask_maps_equal_hand_counts(report):
    t, out, _, _ = report
    fig12 = pd.read_csv(out / "fig12_toy_heads_shared.csv")
    shared = sum(m.astype(int) for m in t.masks.values())
    assert fig12.pivot(index="layer", columns="head", values="languages_enabling").to_numpy().tolist() == shared.tolist()
    fig13 = pd.read_csv(out / "fig13_toy_mask_overlap.csv").set_index(["panel", "language_a", "language_b"])["value"]
    de, en = t.masks["de"], t.masks["en"]
    assert fig13[("% of row language's heads", "de", "en")] == pytest.approx(100 * (de & en).sum() / de.sum())
    assert fig13[("% of row language's heads", "en", "de")] == pytest.approx(100 * (de & en).sum() / en.sum())
    assert fig13[("shared heads (count)", "en", "en")] == en.sum()


def test_report_correlations_equal_those_of_the_plotted_points(report):
    _, out, summary, _ = report
    fig08 = pd.read_csv(out / "fig08_toy_similarity_vs_positive_influence.csv")
    c = correlate(fig08["mask_cosine_similarity"], fig08["positive_share_pct"])
    got = next(x for x in summary["correlations"] if x["figure"] == "fig08")
    assert got["n"] == 6 and got["pearson_r"] == pytest.approx(c.pearson_r) and got["spearman_p"] == pytest.approx(c.spearman_p)
    fig07 = pd.read_csv(out / "fig07_toy_specialization_vs_accuracy.csv")
    for x in (x for x in summary["correlations"] if x["figure"] == "fig07"):
        d = fig07[fig07["variant"] == x["variant"]]
        assert x["n"] == len(d) == 6  # 3 languages x 2 epochs
        assert x["pearson_r"] == pytest.approx(correlate(d["specialization_pct"], d["accuracy_pct"]).pearson_r)
    assert sum(x["figure"] == "fig09" for x in summary["correlations"]) == 2  # one per layer


def test_summary_and_html_link_every_figure(report):
    t, out, summary, _ = report
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    for key in ("accuracy", "heads_disabled", "comparisons", "correlations", "skipped", "figures"):
        assert key in summary
    assert summary["heads_disabled"]["toy"] == {lang: int((~m).sum()) for lang, m in t.masks.items()}
    assert set(summary["accuracy"]["toy"]) == set(t.influence)
    assert {"r", "p"} <= {k.split("_")[-1] for k in summary["correlations"][0]}
    page = (out / "report.html").read_text()
    for fig in summary["figures"]:
        assert f"href='{fig['png']}'" in page and f"href='{fig['csv']}'" in page
        assert (out / fig["png"]).exists() and (out / fig["csv"]).exists()
    embedded = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(embedded) == len(summary["figures"])
    assert {base64.b64decode(e) for e in embedded} == {(out / f["png"]).read_bytes() for f in summary["figures"]}
    assert "table1_disabled_heads.csv" in page and "table2_subnetwork_accuracy.csv" in page


def test_tables(report):
    t, out, _, _ = report
    t1 = pd.read_csv(out / "table1_disabled_heads.csv")
    assert t1.loc[0, "task"] == "toy" and t1.loc[0, "total_heads"] == 8
    assert [t1.loc[0, lang] for lang in t.languages] == [int((~t.masks[lang]).sum()) for lang in t.languages]
    t2 = pd.read_csv(out / "table2_subnetwork_accuracy.csv")
    acc = t.accuracy
    want = acc[(acc.variant == "sft+subnet") & (acc.language == "en") & (acc.split == "test") & (acc.epoch == 2)].accuracy
    assert t2.set_index("language").at["en", "sft_subnet_pct"] == pytest.approx(100 * want.item())
    assert t2.loc[0, "split"] == "test"


def test_missing_variants_are_skipped_with_reasons_and_tasks_prefix_files(tmp_path):
    only_full = make_synthetic_results("one", variants=["full"], seed=1)
    only_full.pruning_curves = only_full.pruning_curves.iloc[:0]
    two = make_synthetic_results("two", languages=("xa", "xb"), variants=["full", "full+subnet"], seed=2)
    summary = build_report([only_full, two], tmp_path, "mixed", dpi=50)
    files = {p.name for p in tmp_path.glob("fig*.png")}
    assert "fig11_one_full_shares.png" in files and "fig02_two_subnet_vs_full.png" in files
    assert not any(f.startswith("fig02_one") for f in files)
    skipped = {(s["figure"], s["task"]): s["reason"] for s in summary["skipped"]}
    assert "full+subnet" in skipped[("fig02", "one")]
    assert "random-sft" in skipped[("fig06", "two")]
    assert "at least 3 languages" in skipped[("fig09", "two")]
    assert table1([only_full, two]).columns.tolist() == ["task", "total_heads", "de", "en", "ko", "xa", "xb"]
    # A rebuild with fewer results leaves no stale figures behind.
    build_report([only_full], tmp_path, "mixed", dpi=50)
    assert not any(p.name.startswith("fig02_two") for p in tmp_path.iterdir())
    assert "fig11_one_full_shares.png" in {p.name for p in tmp_path.iterdir()}


def test_a_figure_whose_data_is_inconsistent_is_skipped_not_fatal(tmp_path):
    t = make_synthetic_results(variants=["full", "full+subnet"], seed=4)
    res = t.influence["full+subnet"]
    t.influence["full+subnet"] = InfluenceResult(res.topk[res.topk["sign"] == "pos"], res.predictions)  # no negatives
    t.masks, t.pruning_curves = {}, t.pruning_curves.iloc[:0]  # fewer figures: faster
    summary = build_report([t], tmp_path, "broken", dpi=50)
    reasons = {s["figure"]: s["reason"] for s in summary["skipped"]}
    assert reasons["fig02"].startswith("error: ValueError: no test example has 'neg' rankings")
    assert "fig11_toy_full_shares.png" in {f["png"] for f in summary["figures"]}


def test_bad_inputs_name_what_is_wrong():
    t = make_synthetic_results(variants=["full"])
    t.masks["en"] = np.ones((3, 4), bool)
    with pytest.raises(ValueError, match=r"masks\['en'\] has shape \(3, 4\)"):
        t.validate()
    t = make_synthetic_results(variants=["full"])
    t.influence["sft"] = t.influence["full"]
    with pytest.raises(ValueError, match="unknown variant name 'sft'"):
        t.validate()
    t = make_synthetic_results(variants=["full"])
    t.influence["full"].predictions["test_id"] = range(len(t.influence["full"].predictions))
    with pytest.raises(ValueError, match="no row in predictions"):
        t.validate()


def test_analysis_imports_without_transformers():
    # The report must start fast: the mask toolkit is shared with subnetworks, whose pruning modules load transformers.
    code = "import sys, subnet_ray.analysis; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ----------------------------------------------------------------------------- uncertainty


def test_bootstrap_interval_of_a_mean_matches_the_normal_theory_width():
    from subnet_ray.analysis.bootstrap import bootstrap_means, percentile_interval

    x = np.random.default_rng(3).normal(5.0, 2.0, size=(400, 1))
    lo, hi = percentile_interval(bootstrap_means([x]))
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert lo[0] < x.mean() < hi[0]
    assert (hi[0] - lo[0]) == pytest.approx(2 * half, rel=0.15)
    # same seed, same replicates: a regenerated report has the same intervals
    np.testing.assert_array_equal(bootstrap_means([x]), bootstrap_means([x]))


def test_bootstrap_over_runs_carries_the_spread_between_runs():
    from subnet_ray.analysis.bootstrap import bootstrap_means, percentile_interval

    # Two seeds without spread inside each: resampling examples alone would give [5, 5];
    # resampling the seeds gives means 0, 5 or 10.
    runs = [np.zeros((50, 1)), np.full((30, 1), 10.0)]
    reps = bootstrap_means(runs)
    assert set(np.unique(reps)) == {0.0, 5.0, 10.0}
    lo, hi = percentile_interval(reps)
    assert (lo[0], hi[0]) == (0.0, 10.0)


def scripted(in_share_by_example, lang="a", other="b", k=10):
    """Returns topk rows where test example i of `lang` has in_share_by_example[i] % in-language positives."""
    rows = []
    for i, share in enumerate(in_share_by_example):
        n_in = int(round(share * k / 100))
        rows += ranking(f"t{i}", lang, "pos", lang * n_in + other * (k - n_in), np.linspace(1, 0.1, k))
        rows += ranking(f"t{i}", lang, "neg", other * k, -np.linspace(1, 0.1, k))
    return pd.DataFrame(rows)


def test_change_interval_holds_a_known_difference_and_marks_it(tmp_path):
    from subnet_ray.analysis.influence_figures import fig02

    g = np.random.default_rng(0)
    n = 120
    full = g.choice([20, 30, 40], size=n).astype(float)
    sub = full + g.choice([0, 10, 20], size=n, p=[0.2, 0.5, 0.3])  # known mean change: +11 points
    correct = preds([(f"t{i}", "a", 1, 1) for i in range(n)])
    t = TaskResults("toy", ["a", "b"], {}, {}, None, None,
                    {"full": InfluenceResult(scripted(full), correct), "full+subnet": InfluenceResult(scripted(sub), correct)})
    w = FigureWriter(tmp_path)
    fig02(w, t)
    d = pd.read_csv(tmp_path / "fig02_toy_subnet_vs_full.csv")
    cell = d[(d["sign"] == "most positive") & (d["test_language"] == "a") & (d["train_language"] == "a")].iloc[0]
    assert cell["delta_pct"] == pytest.approx((sub - full).mean())
    assert cell["ci_low"] < (sub - full).mean() < cell["ci_high"]
    assert cell["ci_low"] > 0 and bool(cell["significant"])
    assert cell["ci_high"] - cell["ci_low"] < 4  # n = 120 paired examples: sd ~7.5 -> half-width ~1.4
    rec = w.comparisons["toy"]["full+subnet vs full"]
    assert rec["in_language_pos_change_ci"]["a"] == [pytest.approx(cell["ci_low"]), pytest.approx(cell["ci_high"])]
    assert "its interval lies above 0 for 1 of them" in w.records[0].caption  # the caption says what holds up
    labels = w.records[0].labels["most positive"]  # cells row by row: (a, a) first
    assert labels[0].endswith("*") and labels[0] == f"{cell['delta_pct']:.1f}*"


def test_identical_variants_give_an_interval_around_zero_and_no_mark(tmp_path):
    from subnet_ray.analysis.influence_figures import fig02

    full = np.random.default_rng(1).choice([20, 30, 40, 50], size=80).astype(float)
    correct = preds([(f"t{i}", "a", 1, 1) for i in range(80)])
    t = TaskResults("toy", ["a", "b"], {}, {}, None, None,
                    {"full": InfluenceResult(scripted(full), correct), "full+subnet": InfluenceResult(scripted(full), correct)})
    w = FigureWriter(tmp_path)
    fig02(w, t)
    d = pd.read_csv(tmp_path / "fig02_toy_subnet_vs_full.csv")
    assert (d["ci_low"] <= 0).all() and (d["ci_high"] >= 0).all()
    assert not d["significant"].any()
    assert w.records and not any("*" in text for texts in w.records[0].labels.values() for text in texts)
    assert "its interval lies above 0 for 0 of them" in w.records[0].caption


def test_correlation_intervals_are_fisher_z():
    c = correlate(np.arange(28.0), np.arange(28.0) + np.random.default_rng(0).normal(0, 8, 28))
    se = 1 / np.sqrt(28 - 3)
    z = np.arctanh(c.pearson_r)
    assert c.pearson_ci == pytest.approx((np.tanh(z - 1.959964 * se), np.tanh(z + 1.959964 * se)), abs=1e-6)
    zs = np.arctanh(c.spearman_r)
    assert c.spearman_ci == pytest.approx((np.tanh(zs - 1.959964 * np.sqrt(1.06) * se), np.tanh(zs + 1.959964 * np.sqrt(1.06) * se)), abs=1e-6)
    assert c.as_dict()["pearson_ci"] == list(c.pearson_ci)
    assert all(np.isnan(v) for v in correlate([1, 2, 3], [2, 1, 3]).pearson_ci)  # n < 4: undefined


def test_pruning_figure_states_the_sweeps_threshold_not_the_papers(tmp_path):
    from subnet_ray.analysis.mask_figures import pruning_curves

    t = make_synthetic_results(variants=["full"])
    t.threshold, t.step_fraction = 0.9, 0.25
    w = FigureWriter(tmp_path)
    pruning_curves(w, t)
    caption = w.records[0].caption
    assert "25% of all heads at a time" in caption and "at or above 90% of the full model" in caption
    assert "95%" not in caption.split("(Section 3.1")[0]
def _diag_ci(csv: pd.DataFrame, sign: str = "most positive") -> dict:
    """Returns {test language: low, high} of a figure CSV's in-language cells, flat for pytest.approx."""
    d = csv[(csv["sign"] == sign) & (csv["test_language"] == csv["train_language"])]
    return {f"{lang} {end}": v for lang, lo, hi in zip(d["test_language"], d["ci_low"], d["ci_high"])
            for end, v in (("low", lo), ("high", hi))}


def _flat(cis: dict) -> dict:
    return {f"{lang} {end}": v for lang, (lo, hi) in cis.items() for end, v in (("low", lo), ("high", hi))}


def test_summary_effects_are_the_figures_numbers_and_intervals(report):
    t, out, summary, _ = report
    eff = summary["effects"]["toy"]
    assert eff["heads_kept"] == pytest.approx({lang: float(m.mean()) for lang, m in t.masks.items()}, abs=1e-4)
    fig11 = pd.read_csv(out / "fig11_toy_full_shares.csv")
    diag = fig11[(fig11["sign"] == "most positive") & (fig11["test_language"] == fig11["train_language"])]
    assert eff["full_in_language_pos"] == pytest.approx(dict(zip(diag["test_language"], diag["share_pct"])), abs=1e-4)
    # the verdicts' intervals are the very intervals the figures plot and their CSVs hold
    assert _flat(eff["full_in_language_pos_ci"]) == pytest.approx(_diag_ci(fig11), abs=1e-6)
    fig2 = summary["comparisons"]["toy"]["full+subnet vs full"]
    assert eff["subnet_in_language_change"] == pytest.approx(fig2["in_language_pos_change"], abs=1e-4)
    assert eff["subnet_in_language_change_ci"] == fig2["in_language_pos_change_ci"]
    assert _flat(eff["subnet_in_language_change_ci"]) == pytest.approx(_diag_ci(pd.read_csv(out / "fig02_toy_subnet_vs_full.csv")), abs=1e-6)
    random = next(v for k, v in summary["comparisons"]["toy"].items() if k.startswith("full+random (mean of"))
    for lang, r in eff["random_in_language_change"].items():
        seeds = {name: summary["comparisons"]["toy"][f"{name} vs full"]["in_language_pos_change"][lang] for name in r["per_seed"]}
        assert r["per_seed"] == pytest.approx(seeds, abs=1e-4) and r["mean"] == pytest.approx(np.mean(list(seeds.values())), abs=1e-4)
        assert r["subnet"] == eff["subnet_in_language_change"][lang]
        assert r["mean_ci"] == random["in_language_pos_change_ci"][lang] and r["subnet_ci"] == fig2["in_language_pos_change_ci"][lang]
    fig08 = next(x for x in summary["correlations"] if x["figure"] == "fig08")
    assert eff["similarity_vs_positive_share"]["pearson_r"] == pytest.approx(fig08["pearson_r"])
    assert eff["similarity_vs_positive_share"]["pearson_ci"] == pytest.approx(fig08["pearson_ci"])
    assert set(eff["checks"]) == {"full_cross_language", "subnet_raises_in_language", "random_below_subnet",
                                  "similarity_tracks_influence"}
    assert set(eff["checks"].values()) <= {"holds", "inconclusive", "contradicted", None}
    assert set(summary["verdict_rules"]) == set(eff["checks"]) | {"null"}
    html = (out / "report.html").read_text()
    for rule in summary["verdict_rules"].values():  # each rule stated, in one line
        assert "\n" not in rule and re.sub(r"\s+", " ", rule) in html.replace("&#x27;", "'")


def test_verdicts_follow_the_intervals_not_the_point_values():
    from subnet_ray.analysis.verdicts import paper_verdicts

    # the two cases: r = 0.03 in [-0.55, 0.59] was "true"; five rises with mean +1.8 were "false"
    eff = {"similarity_vs_positive_share": {"variant": "full+subnet", "pearson_r": 0.03, "pearson_ci": [-0.55, 0.59], "n": 12},
           "subnet_in_language_change": {l: 1.8 for l in "abcde"},
           "subnet_in_language_change_ci": {l: [0.2, 3.4] for l in "abcde"}}
    checks, evidence = paper_verdicts(eff, 5)
    assert checks["similarity_tracks_influence"] == "inconclusive" and checks["subnet_raises_in_language"] == "holds"
    assert evidence["subnet_raises_in_language"]["c"] == {"value": 1.8, "ci": [0.2, 3.4], "bound": 0.0, "verdict": "holds"}
    assert checks["full_cross_language"] is None and checks["random_below_subnet"] is None  # not measured: null
    # one language whose interval includes 0: inconclusive; one below 0: contradicted, whatever the others say
    eff["subnet_in_language_change_ci"]["e"] = [-0.1, 3.7]
    assert paper_verdicts(eff, 5)[0]["subnet_raises_in_language"] == "inconclusive"
    eff["subnet_in_language_change_ci"]["e"] = [None, None]  # one test example: no interval, the claim is not shown for e
    assert paper_verdicts(eff, 5)[0]["subnet_raises_in_language"] == "inconclusive"
    assert paper_verdicts(eff, 5)[1]["subnet_raises_in_language"]["e"]["verdict"] is None
    eff["subnet_in_language_change_ci"] = {l: [None, None] for l in "abcde"}
    assert paper_verdicts(eff, 5)[0]["subnet_raises_in_language"] is None
    eff["subnet_in_language_change_ci"] = {l: [0.2, 3.4] for l in "abcd"} | {"e": [-3.0, -0.1]}
    assert paper_verdicts(eff, 5)[0]["subnet_raises_in_language"] == "contradicted"
    # Fig 11's bound is the paper's chance level 100/K: 4 training languages -> 25
    shares = {"full_in_language_pos": {"a": 30.0, "b": 28.0}, "full_in_language_pos_ci": {"a": [25.5, 34.5], "b": [24.0, 32.0]}}
    assert paper_verdicts(shares, 4)[0]["full_cross_language"] == "inconclusive"
    assert paper_verdicts(shares, 5)[0]["full_cross_language"] == "holds"  # chance 20
    shares["full_in_language_pos_ci"]["b"] = [10.0, 24.9]
    assert paper_verdicts(shares, 4)[0]["full_cross_language"] == "contradicted"
    # Fig 3: the random masks' interval wholly below the own subnetwork's, overlapping, wholly above
    r = {"per_seed": {}, "mean": 0.1, "subnet": 4.0}
    for random_ci, expect in (([-1.0, 1.2], "holds"), ([-1.0, 2.5], "inconclusive"), ([5.5, 7.0], "contradicted")):
        got = paper_verdicts({"random_in_language_change": {"a": r | {"mean_ci": random_ci, "subnet_ci": [2.0, 5.0]}}}, 3)[0]
        assert got["random_below_subnet"] == expect, random_ci
    for ci, expect in (([0.01, 0.5], "holds"), ([-0.5, -0.01], "contradicted"), ([None, None], None)):
        got = paper_verdicts({"similarity_vs_positive_share": {"variant": "v", "pearson_r": 0.2, "pearson_ci": ci, "n": 3}}, 3)[0]
        assert got["similarity_tracks_influence"] == expect


def toy_seed(full, sub):
    """Returns one training seed's results: full and full+subnet with the given in-language shares per example."""
    correct = preds([(f"t{i}", "a", 1, 1) for i in range(len(full))])
    curves = pd.DataFrame(columns=["language", "step", "heads_disabled", "accuracy", "full_accuracy"])
    accuracy = pd.DataFrame(columns=["variant", "language", "epoch", "split", "accuracy"])
    return TaskResults("toy", ["a", "b"], {}, {}, curves, accuracy,
                       {"full": InfluenceResult(scripted(full), correct), "full+subnet": InfluenceResult(scripted(sub), correct)})


def test_pooled_report_averages_training_seeds_and_its_interval_carries_their_spread(tmp_path):
    from subnet_ray.analysis.influence_figures import fig02
    from subnet_ray.analysis.seeds import build_seeds_report

    full = np.random.default_rng(2).choice([20, 30, 40], size=60).astype(float)
    up, down = toy_seed(full, full + 20), toy_seed(full, full - 20)
    for name, t in (("up", up), ("down", down)):  # each seed alone: a change of 20 points, far from 0
        w = FigureWriter(tmp_path / name)
        fig02(w, t)
        assert w.comparisons["toy"]["full+subnet vs full"]["in_language_pos_change_ci"]["a"][0] * (1 if name == "up" else -1) > 15
    summary = build_seeds_report({1: [up], 2: [down]}, tmp_path / "disagree", "toy")
    d = pd.read_csv(tmp_path / "disagree" / "fig02_toy_subnet_vs_full.csv")
    cell = d[(d["sign"] == "most positive") & (d["test_language"] == "a") & (d["train_language"] == "a")].iloc[0]
    assert cell["delta_pct"] == pytest.approx(0.0, abs=1e-9)  # the mean over the seeds
    # t over the two seed means (+20, -20), 1 degree of freedom: 0 +- 12.706 * 28.28 / sqrt(2)
    half = stats.t.ppf(0.975, 1) * np.std([20, -20], ddof=1) / np.sqrt(2)
    assert cell["ci_low"] == pytest.approx(-half) and cell["ci_high"] == pytest.approx(half) and not cell["significant"]
    assert summary["comparisons"]["toy"]["full+subnet vs full"]["n_test_examples"] == {"summed over runs": {"a": 120}}
    assert "Mean over 2 training seeds" in summary["figures"][0]["caption"]
    # Fig 11 pooled: the mean of the seeds' full-model shares (here identical)
    shares = pd.read_csv(tmp_path / "disagree" / "fig11_toy_full_shares.csv")
    own = shares[(shares["sign"] == "most positive") & (shares["test_language"] == "a") & (shares["train_language"] == "a")].iloc[0]
    assert own["share_pct"] == pytest.approx(full.mean())
    agree = build_seeds_report({1: [up], 2: [toy_seed(full, full + 10)]}, tmp_path / "agree", "toy")
    rec = agree["comparisons"]["toy"]["full+subnet vs full"]
    assert rec["in_language_pos_change"]["a"] == pytest.approx(15.0)
    lo, hi = rec["in_language_pos_change_ci"]["a"]
    half = stats.t.ppf(0.975, 1) * np.std([20, 10], ddof=1) / np.sqrt(2)  # two seeds: t with 1 df, ~ +-63.5
    assert lo == pytest.approx(15 - half) and hi == pytest.approx(15 + half)
    assert agree["effects_per_seed"]["toy"]["1"]["subnet_in_language_change"]["a"] == pytest.approx(20)
    assert agree["seeds_holding"]["toy"]["subnet_raises_in_language"] == 2  # each seed alone: +20 and +10, clear of 0
    # pooled, the verdict follows the pooled interval (15 +- 63.5 includes 0), not the seeds' count
    pooled = agree["effects"]["toy"]
    assert pooled["subnet_in_language_change_ci"]["a"] == pytest.approx([lo, hi], abs=1e-6)
    assert pooled["checks"]["subnet_raises_in_language"] == "inconclusive"
    assert summary["effects"]["toy"]["checks"]["subnet_raises_in_language"] == "inconclusive"
    assert summary["seeds_holding"]["toy"]["subnet_raises_in_language"] == 1  # +20 holds, -20 contradicted
    assert [e["checks"]["subnet_raises_in_language"] for e in summary["effects_per_seed"]["toy"].values()] == ["holds", "contradicted"]
    html = (tmp_path / "agree" / "report.html").read_text()
    assert "seeds holding" in html and "2/2" in html and "fig02_toy_subnet_vs_full" in html
    assert "seeds pooled" in html and "a +15.00 [" in html and "inconclusive" in html
    with pytest.raises(ValueError, match="at least two training seeds"):
        build_seeds_report({1: [up]}, tmp_path / "one", "toy")


def test_pooled_composition_and_per_epoch_curves_are_the_mean_of_the_seeds(synthetic_report, tmp_path):
    from subnet_ray.analysis.seeds import build_seeds_report

    # seed 0's report is the session's shared one (make_synthetic_results' default seed), seed 4's is written here
    t0, folder0 = synthetic_report[:2]
    seeds, folders = {0: [t0], 4: [make_synthetic_results(seed=4)]}, {0: folder0, 4: tmp_path / "seed4"}
    write_report(seeds[4], folders[4], "synthetic")
    summary = build_seeds_report(seeds, tmp_path / "pooled", "synthetic")
    per_seed = [pd.read_csv(folders[s] / "fig19_toy_composition_de-en.csv") for s in seeds]
    pooled = pd.read_csv(tmp_path / "pooled" / "fig19_toy_composition_de-en.csv")
    keys = ["mask", "test_language", "train_language"]
    mean = pd.concat(per_seed).groupby(keys, sort=False)["delta_pct"].mean()
    np.testing.assert_allclose(pooled.set_index(keys)["delta_pct"].loc[mean.index].to_numpy(), mean.to_numpy())
    for stem in ("fig10_toy_specialization_epochs", "fig18_toy_random_sft_specialization_epochs"):
        per_seed = [pd.read_csv(folders[s] / f"{stem}.csv") for s in seeds]
        pooled = pd.read_csv(tmp_path / "pooled" / f"{stem}.csv")
        keys = [c for c in pooled.columns if c not in ("specialization_pct", "ci_low", "ci_high")]
        mean = pd.concat(per_seed).groupby(keys, sort=False)["specialization_pct"].mean()
        got = pooled.set_index(keys)["specialization_pct"]
        np.testing.assert_allclose(got.loc[mean.index].to_numpy(), mean.to_numpy())
        assert (pooled["ci_low"] <= pooled["specialization_pct"] + 1e-9).all() and (pooled["specialization_pct"] <= pooled["ci_high"] + 1e-9).all()
    names = {f["png"].removesuffix(".png") for f in summary["figures"]}
    assert {"fig02_toy_subnet_vs_full", "fig10_toy_specialization_epochs", "fig11_toy_full_shares"} <= names
    assert "Mean over 2 training seeds" in next(f["caption"] for f in summary["figures"] if f["figure"] == "fig10")
