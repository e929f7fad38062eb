"""The report stands on its own (provenance, contents in figure order, variant legend, empty cells
explained) and its figures are publication-ready (300 dpi PNG and a PDF, labelled colorbars, whole-number
scales for counts, point labels that do not overlap); headline metrics agree with the shares API."""
import html
import json
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from subnet_ray.analysis import compare_shares, specialization
from subnet_ray.analysis.headline import heads_disabled, model_metrics, variant_metrics
from subnet_ray.analysis.mask_figures import write_mask_views
from subnet_ray.analysis.report import table_html, correlations_html, describe_variant
from subnet_ray.analysis import style
from subnet_ray.analysis.tables import interval, p_value, sig, to_latex, to_markdown
from test_analysis import make_synthetic_results

PROVENANCE = {
    "sweep": "synthetic", "sweep_file": "sweeps/synthetic.yaml", "branch": {"training.lr": 0.001},
    "model": {"name": "tiny", "tiny": {"layers": 2, "heads": 4}}, "tasks": [
        {"id": "toy", "languages": ["de", "en", "ko"], "train_size": 8, "dev_size": 4, "test_size": 6}],
    "settings": {"training": {"lr": 0.001, "epochs": 2}, "subnetworks": {"threshold": 0.95}, "methods": ["full", "sft"]},
    "seed": 1, "random_seeds": [0, 1], "packages": {"torch": "2.13.0", "mlflow": "3.17.2"},
    "code_version": "git abc1234", "date": "2026-11-30 04:00:00 UTC",
    "mlflow_runs": {"toy/full/seed1": {"name": "lr=0.001 full s1", "run_id": "r1", "url": "#/experiments/1/runs/r1"}},
}


@pytest.fixture
def built(synthetic_report):
    """(results, folder, summary, records, report.html) of the session's shared synthetic report, with PROVENANCE (conftest)."""
    t, out, summary, records = synthetic_report
    return t, out, summary, records, (out / "report.html").read_text()


def test_report_has_provenance_contents_in_figure_order_and_legend(built):
    t, out, summary, records, page = built
    header = page[page.index("id='provenance'"):page.index("id='contents'")]
    for text in ("sweeps/synthetic.yaml", "training.lr=0.001", "tiny layers=2, heads=4", "lr=0.001, epochs=2",
                 "training seed 1; random-mask seeds 0, 1", "git abc1234", "torch=2.13.0", "2026-11-30 04:00:00 UTC",
                 "href='http://127.0.0.1:5000/#/experiments/1/runs/r1'>lr=0.001 full s1</a>"):
        assert text in header, text
    assert summary["provenance"]["code_version"] == "git abc1234"
    contents = page[page.index("id='contents'"):page.index("</ol>")]
    toc = re.findall(r"<li><a href='#(fig\d\d_[^']+|pruning_[^']+)'>", contents)
    figures = re.findall(r"<figure id='([^']+)'>", page)
    assert toc == figures and len(figures) == len(records) > 10  # contents and body agree, every figure listed
    numbers = [int(f[3:5]) for f in figures if f.startswith("fig")]
    assert numbers == sorted(numbers) and figures[-1].startswith("pruning_")  # paper order, extra figures last
    assert [f["png"][:-4] for f in summary["figures"]] == figures
    legend = page[page.index("id='legend'"):page.index("id='accuracy'")]
    for v in t.influence:
        assert f"<code>{v}</code>" in legend and html.escape(describe_variant(v)) in legend
    assert "en's subnetwork applied to another test language" in describe_variant("full+subopt:en")
    # empty cells say n/a and each table explains them (this synthetic report has no empty cell left since the
    # correlation table lost its per-row NaN columns: the rendering is checked on a table that has one)
    assert page.count("class='note'>n/a:") >= 3
    assert "<td>n/a</td>" in table_html(pd.DataFrame({"variant": ["full"], "xa": [np.nan], "xb": [0.5]}))


def test_figures_are_300_dpi_pngs_with_a_pdf_and_csv_beside_each(built):
    _, out, _, records, _ = built
    for r in records:
        dpi = Image.open(r.png).info["dpi"]
        assert dpi == pytest.approx((300, 300), abs=0.5), r.name
        assert r.pdf.read_bytes()[:5] == b"%PDF-" and r.csv.exists()
    fig12 = next(r for r in records if r.name.startswith("fig12_"))
    width, _ = Image.open(fig12.png).size
    assert width >= 900  # print resolution, not a 100-dpi thumbnail


def test_count_heatmap_has_one_colour_per_whole_number_and_a_labelled_bar():
    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    import matplotlib

    cmap, norm = style.count_scale(matplotlib.colormaps["Blues"], 0, 3)
    im = ax.imshow(np.array([[0, 1], [2, 3]]), cmap=cmap, norm=norm)
    bar = style.colorbar(fig, im, ax, "languages_enabling", count=True)
    fig.canvas.draw()
    ticks = [t for t in bar.get_ticks() if -0.5 <= t <= 3.5]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert bar.ax.get_ylabel() == "languages enabling the head"
    assert len({tuple(cmap(norm(v))) for v in (0, 1, 2, 3)}) == 4
    assert style.label("delta_pct") == "change in share, points" and style.label("relative_accuracy_pct") != "relative_accuracy_pct"
    assert style.label("heads_disabled") == "heads disabled" and style.label("top_k_pct") == "top k (%)"


def test_point_labels_do_not_overlap_and_shared_points_share_a_label():
    fig = Figure(figsize=(3, 3))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    xs = [0.5, 0.5, 0.501, 0.502, 0.503, 0.9]
    ys = [0.5, 0.5, 0.501, 0.5, 0.499, 0.1]
    ax.scatter(xs, ys)
    texts = style.place_labels(ax, np.array(xs), np.array(ys), ["en>de", "ko>de", "de>en", "ko>en", "de>ko", "en>ko"])
    fig.canvas.draw()
    assert len(texts) == 5 and texts[0].get_text() == "en>de, ko>de"
    assert style.overlapping(texts, fig.canvas.get_renderer()) == []


def test_headline_metrics_agree_with_the_shares_api():
    t = make_synthetic_results()
    m = variant_metrics(t)
    d = compare_shares(t.influence, "full+subnet", "full", t.languages, sign="pos").delta
    assert m["full+subnet"]["change_in_pos/en"] == pytest.approx(specialization(d)["en"])
    assert m["full+subnet"]["change_in_pos_mean"] == pytest.approx(float(specialization(d).mean()))
    assert "change_in_pos/de" not in m["full"]  # the full model is the reference
    assert set(m["full+subopt:en"]) >= {"test_accuracy/de", "share_in_pos/de"} and "share_in_pos/en" not in m["full+subopt:en"]
    full = model_metrics(t, "full", m)
    assert full["change_in_pos_mean"] == m["full+subnet"]["change_in_pos_mean"]  # Fig 2 diagonal
    assert full["full+subopt:en/test_accuracy/de"] == m["full+subopt:en"]["test_accuracy/de"]
    assert not any(k.startswith("sft+") for k in full)
    sft = model_metrics(t, "sft", m)
    assert sft["test_accuracy_mean"] == m["sft+subnet"]["test_accuracy_mean"] and "sft+union:de-en/share_in_pos/de" in sft
    assert {k: v for k, v in full.items() if k.startswith("heads_disabled/")} == {
        f"heads_disabled/{k}": float(v) for k, v in heads_disabled(t).items()}
    assert heads_disabled(t) == {lang: int((~t.masks[lang]).sum()) for lang in t.languages}


def test_mask_views_list_the_mask_and_draw_it(tmp_path):
    mask = np.array([[True, False, True], [False, False, True]])
    (tmp_path / "xa").mkdir()
    np.save(tmp_path / "xa" / "mask.npy", mask)
    written = write_mask_views(tmp_path)
    view = json.loads((tmp_path / "xa" / "heads.json").read_text())
    assert view["mask"] == [[1, 0, 1], [0, 0, 1]] and view["disabled"] == [[0, 1], [1, 0], [1, 1]]
    assert view["heads_disabled"] == 3 and view["language"] == "xa"
    assert Image.open(tmp_path / "xa" / "mask.png").size[0] > 100 and len(written) == 2


def test_tables_render_markdown_and_latex_exactly():
    df = pd.DataFrame({"task": ["a_b", "c"], "acc_pct": [50.0, np.nan], "n": [3, 4]})
    assert to_markdown(df) == ("| task | acc_pct | n |\n| :--- | ---: | ---: |\n| a_b | 50.0 | 3 |\n| c | n/a | 4 |\n")
    tex = to_latex(df, "Accuracy (%)", "tab:x")
    assert "\\caption{Accuracy (\\%)}" in tex and "a\\_b & 50.0 & 3 \\\\" in tex and "c & n/a & 4 \\\\" in tex
    assert "\\begin{tabular}{lrr}" in tex


def test_table_cells_carry_three_significant_digits_p_values_and_intervals():
    assert [sig(v) for v in (0.730732, 83.3333, 99.96, 1234.5, -6.666666, 2.37e-05, 0.0, 7, np.nan)] == [
        "0.731", "83.3", "100", "1230", "-6.67", "2.37e-05", "0", "7", "n/a"]
    assert [p_value(p) for p in (2.37e-05, 0.000999, 0.001, 0.87793, np.nan)] == [
        "p < 0.001", "p < 0.001", "p = 0.00100", "p = 0.878", "n/a"]
    assert interval(0.730732, 0.977451) == "[0.731, 0.977]" and interval(np.nan, 0.5) == "n/a"
    row = {"figure": "fig08", "task": "xnli", "what": "mask cosine similarity vs positive cross-language influence",
           "x": "sim", "y": "share", "variant": "sft+subnet", "n": 20, "pearson_r": 0.8812345, "pearson_p": 2.37e-05,
           "spearman_r": 0.7, "spearman_p": 0.0123456, "pearson_ci": [0.730732, 0.977451], "spearman_ci": [0.4, 0.9]}
    section = "\n".join(correlations_html([row, {**row, "variant": "full+subnet", "pearson_p": 0.5}]))
    assert section.count(row["what"]) == 1  # the description once, above the figure's table, not in each row
    cells = [html.unescape(c) for c in re.findall(r"<td>([^<]*)</td>", section)]
    assert cells[:8] == ["sft+subnet", "20", "0.881", "[0.731, 0.977]", "p < 0.001", "0.700", "[0.400, 0.900]", "p = 0.0123"]
    assert cells[12] == "p = 0.500"


def test_report_correlations_are_one_table_per_figure_and_csvs_keep_full_precision(built):
    t, out, summary, records, page = built
    section = page[page.index("id='correlations'"):page.index("<h2>Figures</h2>")]
    groups = {(c["figure"], c["task"]) for c in summary["correlations"]}
    heads = re.findall(r"<h3>([^<]*)</h3>", section)
    assert sorted(h.split(" (")[0] for h in heads) == sorted(f for f, _ in groups)  # one heading per figure
    assert "fig09 (toy): mask cosine similarity vs positive cross-language influence, per layer" in html.unescape(section)
    cells = [html.unescape(c) for c in re.findall(r"<td>([^<]*)</td>", section)]
    assert not [c for c in cells if "influence" in c or "vs" in c]  # no description repeated in a row
    for c in cells:  # every number at 3 significant digits at most
        for number in re.findall(r"\d[\d.]*(?:e[-+]\d+)?", c):
            digits = number.split("e")[0].replace(".", "").lstrip("0")
            assert len(digits) <= 3, c
    fig08 = next(c for c in summary["correlations"] if c["figure"] == "fig08")
    i = cells.index(sig(fig08["pearson_r"]))
    assert cells[i + 1:i + 3] == [interval(*fig08["pearson_ci"]), p_value(fig08["pearson_p"])]
    # the CSV beside the figure keeps full precision: only the rendered tables are rounded
    layers = pd.read_csv(out / "fig09_toy_layer_similarity_correlation.csv")
    pearson = layers[layers["method"] == "Pearson"].set_index("layer")["r"]
    for c in (c for c in summary["correlations"] if c["figure"] == "fig09"):
        assert pearson[c["layer"]] == pytest.approx(c["pearson_r"], rel=1e-12)
        assert sig(pearson[c["layer"]]) != repr(pearson[c["layer"]])  # more digits than the table shows
