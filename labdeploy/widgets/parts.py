"""Small pieces the newer panels share: a DataFrame as a compact HTML table, and the server
picker's choices (the registered servers, plus one handed in)."""

from __future__ import annotations

import html
from typing import Callable, Optional, Sequence

import pandas as pd

TABLE_CSS = ("<style>.labdeploy-table td,.labdeploy-table th{padding:2px 14px 2px 0;text-align:left;"
             "vertical-align:top}.labdeploy-table th{color:#1f1f1f;font-weight:600}</style>")
BAD = "color:#c5221f"
GOOD = "color:#188038"


def cell(value) -> str:
    """One value as text for a table: empty for missing, two decimals for fractions."""
    if value is None or (not isinstance(value, (list, dict, str)) and pd.isna(value)):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def frame_html(df: pd.DataFrame, css_class: str, columns: Optional[Sequence[str]] = None, *,
               row_style: Optional[Callable[[pd.Series], str]] = None, empty: str = "(nothing to show)",
               index: bool = False) -> str:
    """`df` as a small HTML table (escaped) with `css_class`; `row_style(row)` colours a row."""
    if df is None or len(df) == 0:
        return f"<i class='{css_class}'>{html.escape(empty)}</i>"
    shown = df.reset_index() if index else df
    cols = list(columns) if columns is not None else list(shown.columns)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    rows = []
    for _, r in shown.iterrows():
        style = row_style(r) if row_style is not None else ""
        tds = "".join(f"<td>{html.escape(cell(r.get(c)))}</td>" for c in cols)
        rows.append(f"<tr style='{style}'>{tds}</tr>")
    return (TABLE_CSS + f"<div style='overflow-x:auto'><table class='labdeploy-table {css_class}' "
            f"style='border-collapse:collapse;font-size:90%'><tr>{head}</tr>{''.join(rows)}</table></div>")
