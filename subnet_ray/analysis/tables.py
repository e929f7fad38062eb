"""Tables as text: Markdown and LaTeX (booktabs) renderings of a DataFrame, empty cells shown as n/a, and
the cell formats of the report's tables (3 significant digits, p-values, intervals).

Own renderers rather than pandas' (which need tabulate or jinja2): what a paper's Tables 1 and 2
need is small, and the output is exactly testable.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

NA = "n/a"


def cell(v, digits: int = 1) -> str:
    """Returns a cell's text: floats with `digits` decimals, whole numbers as integers, missing as n/a."""
    if _missing(v):
        return NA
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _missing(v) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def sig(v, digits: int = 3) -> str:
    """Returns a number at `digits` significant digits, positional unless tiny or huge (0.731, 83.3, 1230, 2.37e-05);
    whole numbers (ints) as they are; missing as n/a."""
    if _missing(v):
        return NA
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(v)
    v = float(f"{float(v):.{digits}g}")  # round first: 99.96 is 100, so it needs no decimals
    if v == 0:
        return "0"
    e = math.floor(math.log10(abs(v)))
    if not -4 <= e < 6:
        return f"{v:.{digits - 1}e}"
    return f"{v:.{max(0, digits - 1 - e)}f}"


def p_value(p, floor: float = 1e-3) -> str:
    """Returns a p-value as text: 'p < 0.001' below `floor`, else 'p = 0.0237' (3 significant digits); missing as n/a."""
    if _missing(p):
        return NA
    return f"p < {floor:g}" if p < floor else f"p = {sig(p)}"


def interval(low, high, digits: int = 3) -> str:
    """Returns an interval as '[0.731, 0.977]'; n/a when either end is missing (an undefined interval)."""
    if _missing(low) or _missing(high):
        return NA
    return f"[{sig(low, digits)}, {sig(high, digits)}]"


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
