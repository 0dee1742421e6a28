"""What is deployed (deploy.json) and every attempt so far (history.jsonl), on the server.

Kept with the app on the server so every machine that deploys it sees the same story.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import pandas as pd

from ..redaction import redact_frame
from ..commands import files
from ..server import layout
from .. import names
from ..ssh import pool

# In ~/dallinger/<app>. One command appends one history line; lines are small, so O_APPEND
# keeps concurrent writers apart. deploy.json is replaced atomically (temporary file, then
# rename) with the history line appended, in one round trip: the state on stdin, the line (no
# secrets in it) as an argument.
HISTORY_FILE = "history.jsonl"
STATE_FILE = "deploy.json"

COLUMNS = ["started_at", "finished_at", "operation", "version", "outcome", "failed_step", "message",
           "image", "image_id", "who", "duration_s"]


@dataclass
class DeployRecord:
    app: str
    operation: str  # deploy | update | destroy
    version: str = ""
    image: str = ""
    image_id: str = ""  # the image's digest (sha256:...)
    who: str = ""
    started_at: str = ""
    finished_at: str = ""
    duration_s: float = 0.0
    outcome: str = ""  # success | failed | rolled back
    failed_step: str = ""
    message: str = ""
    extra: dict = field(default_factory=dict)

    def to_line(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=str) + "\n"


def append(remote, record: DeployRecord) -> None:
    remote.run(files.append(layout.app_dir(record.app), HISTORY_FILE), stdin=record.to_line().encode())


def parse_lines(text: str) -> list[dict]:
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a lost connection; the others still count
    return rows


def to_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame.from_records(rows) if rows else pd.DataFrame(columns=COLUMNS)
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = None
    df = df[COLUMNS + [c for c in df.columns if c not in COLUMNS and c != "app"]]
    for col in ("started_at", "finished_at"):
        df[col] = pd.to_datetime(df[col], utc=True, errors="coerce", format="ISO8601")
    df["duration_s"] = pd.to_numeric(df["duration_s"], errors="coerce").astype("float64")
    return redact_frame(df, ["message"]).reset_index(drop=True)  # lines written before redaction existed


@pool.closes_what_it_opens
def history(server, app: str) -> pd.DataFrame:
    """Every deploy, update and destroy attempt of an app, oldest first, as a DataFrame."""
    path = f"{layout.app_dir(names.app_name(app))}/history.jsonl"  # the name is checked before connecting
    remote = pool.connect(server)
    res = remote.run(files.read(path), check=False)
    return to_frame(parse_lines(res.stdout if res.exit_status == 0 else ""))


def record_success(remote, state: dict, record: DeployRecord) -> None:
    """Write deploy.json (what runs now) and append the attempt's history line."""
    body = (json.dumps(state, indent=2, sort_keys=True) + "\n").encode()
    remote.run(files.replace_and_append(layout.app_dir(record.app), STATE_FILE, HISTORY_FILE, record.to_line()),
               stdin=body)
