"""The report folder of a sweep: figures with their CSVs, Tables 1-2, summary.json, report.html.

`build_report` reads only the `TaskResults` it is given (no training, no scoring), so
`subnet-ray report SWEEP` can regenerate everything from the artifact store.
"""
from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from subnet_ray.analysis.effects import paper_effects
from subnet_ray.analysis.figures import FigureRecord, FigureWriter
from subnet_ray.analysis.epoch_figures import fig07, fig10, fig18
from subnet_ray.analysis.influence_figures import fig02, fig03, fig04, fig05, fig06, fig11, fig19
from subnet_ray.analysis.mask_figures import mask_figures
import subnet_ray.analysis.style as style
from subnet_ray.analysis.results import TaskResults, parse_variant
from subnet_ray.analysis.tables import interval, p_value, sig
from subnet_ray.analysis.verdicts import NULL_RULE, RULES, evidence_text, with_verdicts
from subnet_ray.subnetworks.masks import disabled_heads_table

# Files this module writes; older copies are removed first so the folder matches summary.json.
_OWN_PATTERNS = ("fig[0-9][0-9]_*.png", "fig[0-9][0-9]_*.pdf", "fig[0-9][0-9]_*.csv", "pruning_*.png", "pruning_*.pdf",
                 "pruning_*.csv",
                 "table1_*.csv", "table2_*.csv", "summary.json", "report.html")
TABLE2_COLUMNS = {"full+subnet": "full_ft_subnet_pct", "sft+subnet": "sft_subnet_pct", "full": "full_ft_no_mask_pct"}


def final_accuracy(t: TaskResults) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Returns accuracy per variant and language at each variant's last epoch, and the split used (test, else dev)."""
    acc, splits = {}, {}
    for variant, d in t.accuracy.groupby("variant", sort=True):
        split = "test" if (d["split"] == "test").any() else "dev"
        d = d[d["split"] == split]
        d = d[d["epoch"] == d["epoch"].max()]
        order = {lang: i for i, lang in enumerate(t.languages)}
        acc[variant] = {lang: float(a) for lang, a in sorted(zip(d["language"], d["accuracy"]), key=lambda p: order.get(p[0], 99))}
        splits[variant] = split
    return acc, splits


def table1(results: list[TaskResults]) -> pd.DataFrame:
    """Returns Table 1: disabled heads of each language's identified subnetwork, one row per task."""
    langs = list(dict.fromkeys(lang for t in results for lang in t.languages))
    disabled = disabled_heads_table({t.task: t.masks for t in results}).reindex(index=[t.task for t in results], columns=langs)
    disabled.insert(0, "total_heads", [next(iter(t.masks.values())).size if t.masks else None for t in results])
    return disabled.rename_axis("task").reset_index().astype({lang: "Int64" for lang in langs} | {"total_heads": "Int64"})


def table2(results: list[TaskResults]) -> pd.DataFrame:
    """Returns Table 2: accuracy (%) of each language's subnetwork after full fine-tuning and after SFT.

    Columns full_ft_subnet_pct (full+subnet), sft_subnet_pct (sft+subnet), and for reference
    full_ft_no_mask_pct (full) and random_sft_mean_pct (random-sft, mean over seeds), where present.
    """
    rows = []
    for t in results:
        acc, splits = final_accuracy(t)
        randoms = [v for v in acc if v.startswith("random-sft:")]
        for lang in t.languages:
            row = {"task": t.task, "language": lang}
            for variant, column in TABLE2_COLUMNS.items():
                if lang in acc.get(variant, {}):
                    row[column] = 100 * acc[variant][lang]
            values = [acc[v][lang] for v in randoms if lang in acc[v]]
            if values:
                row["random_sft_mean_pct"] = 100 * float(np.mean(values))
            row["split"] = ",".join(sorted({splits[v] for v in [*TABLE2_COLUMNS, *randoms] if v in splits}))
            if len(row) > 3:
                rows.append(row)
    cols = ["task", "language", *[c for c in [*TABLE2_COLUMNS.values(), "random_sft_mean_pct"]
                                  if any(c in r for r in rows)], "split"]
    return pd.DataFrame(rows, columns=cols)


def jsonable(x):
    """Returns x with NaN as None and numpy scalars as Python numbers, for strict JSON."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def clean_own_files(out: Path) -> None:
    """Deletes the files an earlier report wrote in `out` (its own name patterns only), so a rebuilt report has no stale figure."""
    for pattern in _OWN_PATTERNS:
        for path in out.glob(pattern):
            path.unlink()


def build_report(results: list[TaskResults], out_dir: str | Path, sweep_name: str, dpi: int = style.DPI,
                 provenance: dict | None = None) -> dict:
    """Returns summary.json's content, after writing every figure, table and report.html the results allow.

    `provenance` (sweep file, model, settings, seeds, versions, date, MLflow runs) heads the report.
    """
    return write_report(results, out_dir, sweep_name, dpi, provenance)[0]


def _influence_figures(w: FigureWriter, t: TaskResults) -> None:
    """Makes every influence figure the task's variants allow."""
    for make in (fig02, fig03, fig04, fig05, fig06, fig07, fig10, fig11, fig18, fig19):
        w.attempt(int(make.__name__[3:]), t.task, lambda: make(w, t))
    w.skip(17, t.task, "the paper's Fig 17 is Fig 10 for MARC; fig10_<task>_specialization_epochs covers every task")


def write_report(results: list[TaskResults], out_dir: str | Path, sweep_name: str,
                 dpi: int = style.DPI, provenance: dict | None = None) -> tuple[dict, list[FigureRecord]]:
    """Returns (summary, figure records) after writing the report folder; see `build_report`."""
    if not results:
        raise ValueError("build_report needs at least one TaskResults")
    tasks = [t.task for t in results]
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"task ids must be unique within a report, got {tasks}")
    for t in results:
        t.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean_own_files(out)
    w = FigureWriter(out, dpi=dpi)
    for t in results:
        _influence_figures(w, t)
        mask_figures(w, t)
    tables = {"table1_disabled_heads.csv": table1(results), "table2_subnetwork_accuracy.csv": table2(results)}
    for name, table in tables.items():
        table.to_csv(out / name, index=False)
    disabled = tables["table1_disabled_heads.csv"].set_index("task")
    accuracy = {t.task: final_accuracy(t) for t in results}
    summary = jsonable({
        "sweep": sweep_name,
        "provenance": provenance or {},
        "tasks": tasks,
        "languages": {t.task: list(t.languages) for t in results},
        "variants": {t.task: sorted(t.influence) for t in results},
        "accuracy": {task: acc for task, (acc, _) in accuracy.items()},
        "accuracy_split": {task: splits for task, (_, splits) in accuracy.items()},
        "heads_disabled": {t.task: {lang: int(disabled.at[t.task, lang]) for lang in t.masks} for t in results},
        "total_heads": {t.task: (next(iter(t.masks.values())).size if t.masks else None) for t in results},
        "shares": w.shares,
        "comparisons": w.comparisons,
        "correlations": w.correlations,
        "effects": {t.task: with_verdicts(paper_effects(t), len(t.languages)) for t in results},
        "verdict_rules": {**RULES, "null": NULL_RULE},
        "figures": figure_entries(w.records),
        "tables": list(tables),
        "skipped": w.skipped,
    })
    (out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
    (out / "report.html").write_text(render_html(summary, w.records, tables, out))
    return summary, w.records


# The report pages' style sheet: the sweep report and the pooled-seeds report share it.
CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
figure{margin:1.5em 0;border-top:1px solid #ddd;padding-top:1em}figure img{max-width:100%}
figcaption{font-size:0.9em;line-height:1.4}table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#f3f3f3}
.skipped li,.note{font-size:0.85em}.provenance td,.provenance th{text-align:left}"""

NA = "n/a"  # how an empty cell is shown; each table says why its cells can be empty


def figure_entries(records: list[FigureRecord]) -> list[dict]:
    """Returns summary.json's figure list: number, task, file names and caption, in the paper's order."""
    return [{"figure": r.name.split("_")[0], "task": r.task, "png": r.png.name, "pdf": r.pdf.name,
             "csv": r.csv.name, "caption": r.caption} for r in figure_order(records)]


def figure_order(records: list[FigureRecord]) -> list[FigureRecord]:
    """Returns the records in the paper's figure order (Fig 2, 3, ...), figures the paper lacks last, stable by task."""
    return sorted(records, key=lambda r: (0, r.figure, "") if isinstance(r.figure, int) else (1, 0, str(r.figure)))


def describe_variant(name: str) -> str:
    """Returns what a variant name means in words, e.g. 'full+subopt:xb' -> the full model with xb's mask."""
    v = parse_variant(name)
    return {
        "full": "fully fine-tuned model, no mask",
        "full+subnet": "fully fine-tuned model, each test language's own identified subnetwork at test time",
        "full+random": f"fully fine-tuned model, the test language's mask shuffled with random seed {v.seed}",
        "full+subopt": f"fully fine-tuned model, {v.language}'s subnetwork applied to another test language (suboptimal mask)",
        "sft+subnet": "sparse-fine-tuned (SFT) model, each test language's own subnetwork",
        "sft+union": f"SFT model, the union of {'/'.join(v.pair or ())}'s masks on those two test languages",
        "sft+intersect": f"SFT model, the intersection of {'/'.join(v.pair or ())}'s masks on those two test languages",
        "random-sft": f"model SFT-trained with random masks (seed {v.seed}), each test language's random mask",
    }[v.kind]


def table_html(df: pd.DataFrame) -> str:
    """Returns a table as report HTML: no index, `n/a` for missing values, numbers to 3 significant digits."""
    return df.to_html(index=False, na_rep=NA, float_format=sig, border=0)


CORRELATION_IDS = ("variant", "split", "layer")  # what tells a figure's correlations apart, in this order


def correlation_groups(correlations: list[dict]) -> list[tuple[str, pd.DataFrame]]:
    """Returns, per figure and task, its description (once) and its correlations as a table of text cells:
    what tells the rows apart (variant, layer...), n, then Pearson and Spearman r, 95% interval and p."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for c in correlations:
        groups.setdefault((c["figure"], c["task"]), []).append(c)
    out = []
    for (figure, task), rows in groups.items():
        present = [k for k in CORRELATION_IDS if k in rows[0]]
        varying = [k for k in present if k == "variant" or len({str(r.get(k)) for r in rows}) > 1]
        # each row's description names its own identifiers ('layer 3 ...'): without them the figure's rows agree
        whats = {_drop_ids(r) for r in rows}
        what = whats.pop() if len(whats) == 1 else None
        head = f"{figure} ({task}): {what or 'correlations'}"
        head += "".join(f", per {k}" for k in varying if k not in ("variant", "split"))
        head += "".join(f"; {k} = {rows[0][k]}" for k in present if k not in varying)
        if len({(r["x"], r["y"]) for r in rows}) == 1:
            head += f"; x = {rows[0]['x']}, y = {rows[0]['y']}"
        records = []
        for r in rows:
            rec = {k: r.get(k, NA) for k in varying} | ({} if what else {"what": r["what"]}) | {"n": r["n"]}
            for m, name in (("pearson", "Pearson"), ("spearman", "Spearman")):
                rec |= {f"{name} r": sig(r[f"{m}_r"]), f"{name} 95% CI": interval(*r[f"{m}_ci"]),
                        f"{name} p": p_value(r[f"{m}_p"])}
            records.append(rec)
        out.append((head, pd.DataFrame(records)))
    return out


def _drop_ids(row: dict) -> str:
    """Returns a correlation's description without the identifiers its row names ('layer 3 ' and the like)."""
    what = row["what"]
    for k in CORRELATION_IDS:
        if k in row:
            what = what.replace(f"{k} {row[k]} ", "")
    return " ".join(what.split())


def correlations_html(correlations: list[dict]) -> list[str]:
    """Returns the report's correlation section: per figure a one-line description, then its table."""
    esc = html.escape
    parts = ["<h2 id='correlations'>Correlations</h2>",
             "<p class='note'>Pearson and Spearman correlations with two-sided p-values and 95% Fisher-z intervals; "
             f"<i>{NA}</i>: undefined (fewer than 3 pairs, or a constant sample). Full precision in summary.json.</p>"]
    for head, table in correlation_groups(correlations):
        parts += [f"<h3>{esc(head)}</h3>", table.to_html(index=False, border=0)]
    return parts


def provenance_html(p: dict, esc) -> list[str]:
    """Returns the report header: where the numbers came from."""
    if not p:
        return ["<p class='note'>No provenance recorded (report built outside a sweep run).</p>"]
    def kv(d: dict) -> str:
        return ", ".join(f"{k}={v}" for k, v in d.items() if not isinstance(v, (dict, list))) or "-"
    rows = [("Sweep file", f"<a href='../../{esc(p['sweep_file'])}'>{esc(p['sweep_file'])}</a> (in the sweep root)"),
            ("Branch (grid values)", esc(kv(p["branch"])) if p["branch"] else "no grid"),
            ("Model", esc(f"{p['model'].get('name')} " + kv(p["model"].get("tiny") or {}))),
            ("Tasks", esc("; ".join(f"{t['id']}: {', '.join(t['languages'])} (train {t['train_size']}, dev {t['dev_size']}, "
                                    f"test {t['test_size']})" for t in p["tasks"])))]
    rows += [(k.capitalize(), esc(kv(v) if isinstance(v, dict) else ", ".join(map(str, v)))) for k, v in p["settings"].items()]
    rows += [("Seeds", esc(f"training seed {p['seed']}; random-mask seeds {', '.join(map(str, p['random_seeds']))}")),
             ("Code version", esc(p["code_version"])), ("Packages", esc(kv(p["packages"]))), ("Date", esc(p["date"]))]
    runs = p.get("mlflow_runs") or {}
    if runs:
        links = ", ".join(f"<a href='http://127.0.0.1:5000/{esc(r['url'])}'>{esc(r['name'])}</a>" for r in runs.values())
        rows.append(("MLflow runs", f"{links} <span class='note'>(serve them with <code>subnet-ray ui --root ROOT</code>)</span>"))
    return ["<table class='provenance'>"] + [f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows] + ["</table>"]


def render_html(summary: dict, records: list[FigureRecord], tables: dict[str, pd.DataFrame], out: Path) -> str:
    """Returns a self-contained report page: provenance, contents, legend, tables, every figure embedded
    (and linked, with its PDF and CSV) in the paper's order, and what was not made and why."""
    esc = html.escape
    records = figure_order(records)
    variants = sorted({v for task in summary["tasks"] for v in [*summary["variants"][task], *summary["accuracy"][task]]})
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>subnet-ray report: {esc(summary['sweep'])}</title>",
             f"<style>{CSS}</style></head><body><h1>Sweep {esc(summary['sweep'])}</h1>",
             "<h2 id='provenance'>Provenance</h2>", *provenance_html(summary.get("provenance") or {}, esc),
             "<h2 id='contents'>Contents</h2><ol>",
             "<li><a href='#legend'>Variant names</a></li><li><a href='#accuracy'>Accuracy</a></li>",
             "<li><a href='#table1'>Table 1: disabled heads</a></li><li><a href='#table2'>Table 2: subnetwork accuracy</a></li>"]
    parts += [f"<li><a href='#{esc(r.name)}'>{esc(r.name)}</a></li>" for r in records]
    parts += ["<li><a href='#skipped'>Not made</a></li>" if summary["skipped"] else "", "</ol>",
              "<p>Figures follow Choenni et al., <i>Examining Modularity in Multilingual LMs via Language-Specialized "
              "Subnetworks</i> (arXiv 2311.08273); figNN is the paper's Figure NN. Each figure links a PDF and the CSV of "
              "exactly the plotted numbers. Shares are percentages of the top-k most influential training examples; "
              "changes are percentage points. An empty cell reads "
              f"<i>{NA}</i>; each table says why it can be empty. A figure's n per language is the number of test examples "
              "behind it; n=0 means no test example of that language was classified correctly by both models compared, "
              "so that language has no row.</p>",
              "<h2 id='legend'>Variant names</h2><table class='provenance'>"]
    parts += [f"<tr><th><code>{esc(v)}</code></th><td>{esc(describe_variant(v))}</td></tr>" for v in variants]
    parts += ["</table>", "<h2 id='accuracy'>Accuracy (last epoch, %)</h2>",
              f"<p class='note'>{NA}: that variant is not scored on that test language (full+random and full+subopt apply "
              "a mask only to the analysis' focus test language; sft+union/intersect only to the two composed languages).</p>"]
    for task in summary["tasks"]:
        acc = pd.DataFrame(summary["accuracy"][task]).T
        if not acc.empty:
            acc = (100 * acc).round(1).reset_index(names="variant")
            splits = summary["accuracy_split"][task]
            acc.insert(1, "split", [splits[v] for v in acc["variant"]])
            parts += [f"<h3>{esc(task)}</h3>", table_html(acc)]
    parts += verdicts_html(summary["effects"], summary["tasks"])
    notes = {"table1": f"{NA}: the task has no such language.",
             "table2": f"{NA}: the variant of that column was not run for the language (its method is not in the sweep, "
                       "or its influence stage has not finished)."}
    for name, table in tables.items():
        tid = name.split("_")[0]
        title = "Table 1: disabled heads" if tid == "table1" else "Table 2: subnetwork accuracy (%)"
        parts += [f"<h2 id='{tid}'>{title}</h2>", f"<p><a href='{esc(name)}'>{esc(name)}</a></p>", table_html(table),
                  f"<p class='note'>{notes.get(tid, '')}</p>"]
    if summary["correlations"]:
        parts += correlations_html(summary["correlations"])
    parts += figures_html(records, summary["skipped"], out)
    parts.append("</body></html>")
    return "\n".join(parts)


def verdicts_html(effects: dict, tasks: list[str], title: str = "The paper's headline effects") -> list[str]:
    """Returns the verdicts section: each rule in one line, then per task each finding's verdict and the
    values and 95% intervals it was decided from."""
    esc = html.escape
    parts = [f"<h2 id='verdicts'>{esc(title)}</h2><p>Each verdict is decided from the 95% intervals the figures show "
             "(subnet_ray/analysis/verdicts.py):</p><ul class='note'>"]
    parts += [f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in {**RULES, "null": NULL_RULE}.items()]
    parts.append("</ul>")
    for task in tasks:
        e = effects[task]
        rows = [{"finding": k, "verdict": v or "null", "decided from": evidence_text(k, e["evidence"].get(k) or {})}
                for k, v in e["checks"].items()]
        parts += [f"<h3>{esc(task)}</h3>", table_html(pd.DataFrame(rows))]
    return parts


def figures_html(records: list[FigureRecord], skipped: list[dict], out: Path) -> list[str]:
    """Returns the report's figures (each PNG embedded, linked with its PDF and CSV) and what was not made."""
    esc = html.escape
    parts = ["<h2>Figures</h2>"]
    for r in records:
        png = base64.b64encode((out / r.png.name).read_bytes()).decode("ascii")
        parts.append(
            f"<figure id='{esc(r.name)}'><a href='{esc(r.png.name)}'><img alt='{esc(r.name)}' "
            f"src='data:image/png;base64,{png}'></a><figcaption><b>{esc(r.name)}</b>. {esc(r.caption)} "
            f"<a href='{esc(r.pdf.name)}'>PDF</a> <a href='{esc(r.csv.name)}'>Data (CSV)</a></figcaption></figure>")
    if skipped:
        parts.append("<h2 id='skipped'>Not made</h2><ul class='skipped'>")
        parts += [f"<li>{esc(s['figure'])} ({esc(s['task'])}): {esc(s['reason'])}</li>" for s in skipped]
        parts.append("</ul>")
    return parts
