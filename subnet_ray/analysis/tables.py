"""Tables as text: Markdown and LaTeX (booktabs) renderings of a DataFrame, empty cells shown as n/a.

Own renderers rather than pandas' (which need tabulate or jinja2): what a paper's Tables 1 and 2
need is small, and the output is exactly testable.
"""
from __future__ import annotations

import math

import pandas as pd

NA = "n/a"


def cell(v, digits: int = 1) -> str:
    """Returns a cell's text: floats with `digits` decimals, whole numbers as integers, missing as n/a."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return NA
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def to_markdown(df: pd.DataFrame, digits: int = 1) -> str:
    """Returns `df` as a GitHub Markdown table (numbers right-aligned)."""
    cols = [str(c) for c in df.columns]
    align = ["---:" if pd.api.types.is_numeric_dtype(df[c]) else ":---" for c in df.columns]
    rows = [[cell(v, digits).replace("|", "\\|") for v in r] for r in df.itertuples(index=False)]
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """Returns `text` with LaTeX's special characters escaped."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(df: pd.DataFrame, caption: str, label: str, digits: int = 1) -> str:
    """Returns `df` as a LaTeX table (booktabs rules), with caption and label, ready to \\input in a paper."""
    spec = "".join("r" if pd.api.types.is_numeric_dtype(df[c]) else "l" for c in df.columns)
    head = " & ".join(latex_escape(c) for c in df.columns) + r" \\"
    body = [" & ".join(latex_escape(cell(v, digits)) for v in r) + r" \\" for r in df.itertuples(index=False)]
    return "\n".join([r"\begin{table}[t]", r"\centering", f"\\caption{{{latex_escape(caption)}}}", f"\\label{{{label}}}",
                      f"\\begin{{tabular}}{{{spec}}}", r"\toprule", head, r"\midrule", *body, r"\bottomrule",
                      r"\end{tabular}", r"\end{table}"]) + "\n"
