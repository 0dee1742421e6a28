"""The web process: the participant's page, the JSON API it calls, /launch, /health and a
small password-protected dashboard."""

from __future__ import annotations

import hmac
import json
import os
import random
from pathlib import Path

from flask import Flask, abort, jsonify, render_template, request, send_from_directory
from psycopg.types.json import Jsonb

from . import db, jobs

app = Flask(__name__)

DEFAULT_COLORS = {"red": "#d93025", "green": "#188038", "blue": "#1a73e8", "yellow": "#f9ab00"}
DEFAULT_TRIALS = 8


def assets_dir() -> Path:
    return Path(os.environ.get("ASSETS_DIR", "/data/assets"))


def stimuli() -> dict:
    """Colours and trial count from the uploaded assets, or the defaults without them."""
    path = assets_dir() / "stimuli.json"
    try:
        data = json.loads(path.read_text())
        return {"colors": dict(data["colors"]), "trials": int(data.get("trials", DEFAULT_TRIALS))}
    except (OSError, ValueError, KeyError, TypeError):
        return {"colors": DEFAULT_COLORS, "trials": DEFAULT_TRIALS}


def make_trials(colors: dict, n: int, seed=None) -> list[dict]:
    rng = random.Random(seed)
    names = list(colors)
    trials = []
    for i in range(n):
        word = rng.choice(names)
        # Half the trials congruent (ink = word), half not: that contrast is the Stroop effect.
        ink = word if i % 2 == 0 else rng.choice([c for c in names if c != word] or names)
        trials.append({"trial": i + 1, "word": word, "ink": ink})
    rng.shuffle(trials)
    for i, t in enumerate(trials):
        t["trial"] = i + 1
    return trials


@app.get("/")
def index():
    s = stimuli()
    return render_template("index.html", colors=s["colors"], n_trials=s["trials"],
                           version=os.environ.get("LABDEPLOY_VERSION", "dev"),
                           has_logo=(assets_dir() / "logo.svg").exists())


@app.get("/health")
def health():
    checks = {}
    try:
        with db.connect() as conn:
            conn.execute("SELECT 1")
        checks["database"] = True
    except Exception:
        checks["database"] = False
    try:
        checks["redis"] = bool(jobs.client().ping())
    except Exception:
        checks["redis"] = False
    ok = all(checks.values())
    return jsonify({"status": "ok" if ok else "degraded", **checks}), 200 if ok else 503


@app.post("/launch")
def launch():
    """Dallinger's contract: POST /launch prepares the experiment and answers status success."""
    try:
        db.create_tables()
        with db.connect() as conn:
            conn.execute("INSERT INTO launches (version) VALUES (%s)",
                         (os.environ.get("LABDEPLOY_VERSION", "dev"),))
    except Exception as exc:
        app.logger.exception("launch failed")
        return jsonify({"status": "error", "message": str(exc)}), 500
    return jsonify({"status": "success", "recruitment_msg": "The experiment is ready for participants."})


@app.get("/assets/<path:name>")
def asset(name: str):
    return send_from_directory(assets_dir(), name)


@app.post("/api/participants")
def new_participant():
    body = request.get_json(silent=True) or {}
    worker_id = str(body.get("worker_id") or f"anon-{random.getrandbits(32):08x}")[:100]
    s = stimuli()
    with db.connect() as conn:
        row = conn.execute(
            "INSERT INTO participants (worker_id, user_agent, details) VALUES (%s, %s, %s) RETURNING id",
            (worker_id, request.headers.get("User-Agent", "")[:300],
             Jsonb({"colors": list(s["colors"])}))).fetchone()
    return jsonify({"id": row["id"], "trials": make_trials(s["colors"], s["trials"], seed=row["id"])})


@app.post("/api/participants/<int:pid>/responses")
def new_response(pid: int):
    body = request.get_json(silent=True) or {}
    try:
        trial, word, ink = int(body["trial"]), str(body["word"]), str(body["ink"])
        answer, rt = str(body["answer"]), float(body["rt_ms"])
    except (KeyError, TypeError, ValueError):
        return jsonify({"status": "error", "message": "trial, word, ink, answer and rt_ms are needed"}), 400
    with db.connect() as conn:
        if conn.execute("SELECT 1 FROM participants WHERE id = %s", (pid,)).fetchone() is None:
            abort(404)
        conn.execute(
            "INSERT INTO responses (participant_id, trial, word, ink, answer, congruent, correct, rt_ms, extra) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (pid, trial, word, ink, answer, word == ink, answer == ink, rt,
             Jsonb({"key": body.get("key"), "screen": body.get("screen")})))
        conn.execute("UPDATE participants SET n_trials = n_trials + 1 WHERE id = %s", (pid,))
    return jsonify({"status": "success", "correct": answer == ink})


@app.post("/api/participants/<int:pid>/finish")
def finish(pid: int):
    with db.connect() as conn:
        row = conn.execute(
            "UPDATE participants SET finished = TRUE, finished_at = now() WHERE id = %s "
            "RETURNING (SELECT avg(correct::int)::float FROM responses WHERE participant_id = %s) AS accuracy",
            (pid, pid)).fetchone()
    if row is None:
        abort(404)
    jobs.enqueue("score", "web", participant_id=pid)  # the worker computes the summary
    return jsonify({"status": "success", "accuracy": row["accuracy"]})


def _dashboard_allowed() -> bool:
    user = os.environ.get("dashboard_user", "admin")
    password = os.environ.get("dashboard_password")
    auth = request.authorization
    return bool(password and auth and hmac.compare_digest(auth.username or "", user)
                and hmac.compare_digest(auth.password or "", password))


@app.get("/dashboard")
def dashboard():
    if not _dashboard_allowed():
        return ("Log in with the dashboard user and password labdeploy showed after the deploy.", 401,
                {"WWW-Authenticate": 'Basic realm="stroop dashboard"'})
    with db.connect() as conn:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM participants) AS participants, "
            "(SELECT count(*) FROM participants WHERE finished) AS finished, "
            "(SELECT count(*) FROM responses) AS responses, "
            "(SELECT count(*) FROM participants WHERE score IS NOT NULL) AS scored, "
            "(SELECT count(*) FROM jobs WHERE kind = 'tick') AS ticks").fetchone()
    return render_template("dashboard.html", counts=counts)
