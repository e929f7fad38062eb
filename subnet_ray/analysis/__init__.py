"""Cross-language influence analysis: language shares, correlations, the paper's figures, the report.

Input: one `TaskResults` per task (see `results.py` for every field). Output:
`build_report(results, out_dir, sweep_name)` writes figNN_<task>_<slug>.png/.csv,
table1_disabled_heads.csv, table2_subnetwork_accuracy.csv, summary.json and report.html.
No Ray, no MLflow: the orchestration logs the folder.
"""
from subnet_ray.analysis.figures import FigureRecord, FigureWriter
from subnet_ray.analysis.report import build_report, table1, table2, write_report
from subnet_ray.analysis.results import SUM_CHECKPOINT, InfluenceResult, TaskResults, Variant, parse_variant
from subnet_ray.analysis.shares import (
    ShareComparison,
    compare_shares,
    correct_under_all,
    language_shares,
    mean_delta,
    per_example_shares,
    specialization,
    specialization_by_checkpoint,
)
from subnet_ray.analysis.stats import Correlation, correlate

__all__ = [
    "SUM_CHECKPOINT", "Correlation", "FigureRecord", "FigureWriter", "InfluenceResult", "ShareComparison",
    "TaskResults", "Variant", "build_report", "compare_shares", "correct_under_all", "correlate", "language_shares",
    "mean_delta", "parse_variant", "per_example_shares", "specialization", "specialization_by_checkpoint",
    "table1", "table2", "write_report",
]
