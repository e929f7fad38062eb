"""`subnet-ray compare`: the sweeps and branches of a root side by side, with status and headline results.

Reads the sweep files copied into the root (<root>/sweeps/<name>.yaml, runner.save_sweep) and the
artifact store; trains and scores nothing. Three tables: an overview (one row per sweep, branch,
training seed and task: how many stage outputs are done, and the headline numbers), Table 1
(heads disabled per language) and Table 2 (subnetwork accuracy per language), each exportable as
CSV, Markdown and LaTeX.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis.headline import heads_disabled, variant_metrics
from ..analysis.report import table2
from ..analysis.tables import to_latex, to_markdown
from ..sweep.config import ConfigError, SweepSpec, branches, load_sweep
from ..sweep.graph import graph
from ..storage.store import store_for
from .results import collect
from .trial_runs import branch_label

FORMATS = ("csv", "md", "tex")
CAPTIONS = {
    "overview": ("Sweeps and branches: status and headline results (accuracy %, in-language positive share change in "
                 "points against the full model).", "tab:overview"),
    "table1": ("Number of attention heads disabled in each language's subnetwork (cf. Table 1).", "tab:disabled-heads"),
    "table2": ("Test accuracy (%) of each language's subnetwork after full fine-tuning and after SFT (cf. Table 2).",
               "tab:subnetwork-accuracy"),
}


def find_sweeps(root: str | os.PathLike, names: list[str] | None = None) -> list[SweepSpec]:
    """Returns the sweeps to compare: each name or file in `names`, else every sweep file copied into the root."""
    folder = Path(root) / "sweeps"
    if not names:
        files = sorted(folder.glob("*.yaml"))
        if not files:
            raise ConfigError(f"{folder}: no sweep files; run a sweep with --root {root} first, or name sweep files")
        return [load_sweep(f) for f in files]
    out = []
    for name in names:
        path = Path(name) if Path(name).is_file() else folder / f"{name}.yaml"
        if not path.is_file():
            raise ConfigError(f"sweep {name!r}: neither a file nor {path}")
        out.append(load_sweep(path))
    return out


def _mean(values) -> float:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def compare(root: str | os.PathLike, sweeps: list[SweepSpec]) -> dict[str, pd.DataFrame]:
    """Returns {'overview', 'table1', 'table2'} for the sweeps' branches and seeds, from the store under `root`."""
    store = store_for(root)
    overview, t1, t2 = [], [], []
    for spec in sweeps:
        for values, b in branches(spec):
            nodes = graph(b)
            branch = branch_label(values).lstrip("/").replace("/", ",") or "-"
            for seed in b.training.seeds:
                mine = [n for n in nodes if n.params.seed == seed]
                where = {"sweep": spec.name, "branch": branch, "seed": seed}
                results = {t.task: t for t in collect(store, b, nodes, seed)}
                for task in b.tasks:
                    tn = [n for n in mine if n.params.task == task.id]
                    done = sum(store.done(n.key) for n in tn)
                    status = "done" if done == len(tn) else ("not started" if done == 0 else f"partial {done}/{len(tn)}")
                    row = {**where, "task": task.id, "status": status, "stages_done": done, "stages": len(tn)}
                    t = results.get(task.id)
                    if t is not None:
                        m = variant_metrics(t)
                        randoms = [v for v in m if v.startswith("random-sft:")]
                        row |= {
                            "acc_full_pct": 100 * m.get("full", {}).get("test_accuracy_mean", np.nan),
                            "acc_full_subnet_pct": 100 * m.get("full+subnet", {}).get("test_accuracy_mean", np.nan),
                            "acc_sft_subnet_pct": 100 * m.get("sft+subnet", {}).get("test_accuracy_mean", np.nan),
                            "acc_random_sft_pct": 100 * _mean([m[v].get("test_accuracy_mean") for v in randoms]),
                            "change_full_subnet_pts": m.get("full+subnet", {}).get("change_in_pos_mean", np.nan),
                            "change_sft_subnet_pts": m.get("sft+subnet", {}).get("change_in_pos_mean", np.nan),
                            "change_random_sft_pts": _mean([m[v].get("change_in_pos_mean") for v in randoms]),
                            "heads_disabled_mean": _mean(list(heads_disabled(t).values())),
                        }
                        t1.append({**where, "task": task.id, "total_heads": int(next(iter(t.masks.values())).size),
                                   **heads_disabled(t)})
                    overview.append(row)
                if results:
                    t2 += [{**where, **r} for r in table2(list(results.values())).to_dict("records")]
    table1 = pd.DataFrame(t1)
    if not table1.empty:  # counts stay whole numbers where a language is missing from a task
        langs = [c for c in table1.columns if c not in ("sweep", "branch", "seed", "task", "total_heads")]
        table1 = table1.astype({c: "Int64" for c in langs})
    return {"overview": pd.DataFrame(overview), "table1": table1, "table2": pd.DataFrame(t2)}


def render(name: str, df: pd.DataFrame, fmt: str) -> str:
    """Returns one table as CSV, Markdown ('md') or LaTeX ('tex')."""
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "md":
        return to_markdown(df)
    if fmt == "tex":
        caption, label = CAPTIONS[name]
        return to_latex(df, caption, label)
    raise ValueError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")


def write(tables: dict[str, pd.DataFrame], out_dir: str | os.PathLike, formats=FORMATS) -> list[Path]:
    """Returns the files written: <out_dir>/<table>.<fmt> for every table and format."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, df in tables.items():
        for fmt in formats:
            path = out / f"{name}.{fmt}"
            path.write_text(render(name, df, fmt))
            written.append(path)
    return written
