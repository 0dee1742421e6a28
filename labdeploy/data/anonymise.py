"""Anonymised exports: identifying participant columns replaced or blanked.

Rules are data: which tables hold participants, and for each identifying column what to do:

* "pseudonym": a keyed hash (HMAC-SHA256, key random per export and never stored), so one
  worker keeps one pseudonym across rows and tables of the same export but cannot be traced back;
* "blank": the value is removed (missing, i.e. NULL in the archive);
* "row_id": the row's own `id`, as Dallinger's `--scrub-pii` does for worker_id.

Only the listed columns change. Values copied elsewhere (e.g. inside a JSON column the
experiment wrote) are not found automatically: add such columns to the rules.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Mapping, Optional

import pandas as pd

from ..errors import ValidationError

STRATEGIES = ("pseudonym", "blank", "row_id")

# Dallinger's participant table, PsyNet's additions and the example experiment's
# `participants` table.
DEFAULT_TABLES = ("participant", "participants")
DEFAULT_COLUMNS = {
    "worker_id": "pseudonym",
    "unique_id": "pseudonym",
    "assignment_id": "pseudonym",
    "hit_id": "pseudonym",
    "mturk_worker_id": "pseudonym",
    "prolific_pid": "pseudonym",
    "ip_address": "blank",
    "client_ip_address": "blank",
    "user_agent": "blank",
    "fingerprint_hash": "blank",
    "entry_information": "blank",
    "email": "blank",
}


@dataclass(frozen=True)
class Rules:
    """Which tables hold participants ("*" = every table) and what to do with which column."""

    tables: tuple = DEFAULT_TABLES
    columns: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_COLUMNS))

    def validate(self) -> "Rules":
        for col, how in self.columns.items():
            if how not in STRATEGIES:
                raise ValidationError(f"Unknown anonymisation {how!r} for column {col!r}.",
                                      f"Use one of {', '.join(STRATEGIES)}.", code="invalid.anonymise.strategy")
        return self

    def applies_to(self, table: str) -> bool:
        short = table.rsplit(".", 1)[-1]
        return "*" in self.tables or table in self.tables or short in self.tables


def rules(columns: Optional[Mapping[str, str] | list] = None, tables: Optional[tuple] = None,
          extra: Optional[Mapping[str, str]] = None) -> Rules:
    """Build rules: `columns` replaces the default list (a list means "pseudonym" each),
    `extra` adds to it."""
    cols = dict(DEFAULT_COLUMNS) if columns is None else (
        {c: "pseudonym" for c in columns} if isinstance(columns, (list, tuple)) else dict(columns))
    cols.update(extra or {})
    return Rules(tuple(tables) if tables is not None else DEFAULT_TABLES, cols).validate()


def _same_text_dtype(series: pd.Series):
    # pandas 3 text columns keep their "str" dtype; JSON or mixed columns stay object.
    return series.dtype if isinstance(series.dtype, pd.StringDtype) else object


def _pseudonyms(series: pd.Series, key: bytes) -> pd.Series:
    def one(v):
        if v is None or v is pd.NA or (isinstance(v, float) and v != v):
            return None
        return "anon-" + hmac.new(key, str(v).encode(), hashlib.sha256).hexdigest()[:16]
    return pd.Series([one(v) for v in series], index=series.index, dtype=_same_text_dtype(series))


def _blank(series: pd.Series) -> pd.Series:
    if isinstance(series.dtype, pd.StringDtype) or series.dtype == object:
        return pd.Series([None] * len(series), index=series.index, dtype=_same_text_dtype(series))
    return series.where(pd.Series(False, index=series.index))  # all missing, same dtype where possible


def anonymise(frames: Mapping[str, pd.DataFrame], rule: Optional[Rules] = None, *,
              key: Optional[bytes] = None) -> tuple[dict, dict]:
    """Return (anonymised copies of the frames, {table: [columns changed]}). Frames the rules
    don't touch are shared, not copied."""
    rule = (rule or Rules()).validate()
    key = key or secrets.token_bytes(32)
    out: dict = {}
    changed: dict = {}
    for table, frame in frames.items():
        hits = [c for c in frame.columns if rule.applies_to(table) and c in rule.columns]
        if not hits:
            out[table] = frame
            continue
        new = frame.copy()
        for col in hits:
            how = rule.columns[col]
            if how == "pseudonym":
                new[col] = _pseudonyms(frame[col], key)
            elif how == "blank":
                new[col] = _blank(frame[col])
            elif how == "row_id":
                if "id" not in frame.columns:
                    raise ValidationError(f"Table {table!r} has no 'id' column to replace {col!r} with.",
                                          "Use 'pseudonym' or 'blank' for this column.",
                                          code="invalid.anonymise.no_id")
                new[col] = frame["id"].astype("str").where(frame["id"].notna(), None)
        out[table] = new
        changed[table] = hits
    return out, changed
