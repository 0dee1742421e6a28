"""A background sampler of PostgreSQL connections: a time series per app, with gaps.

Every `interval` seconds it takes a snapshot (`pgactivity.snapshot`) and appends one row per
database to a bounded buffer. When PostgreSQL is down or the SSH connection drops, it records
a gap row (ok=False, the error) and keeps going; the next snapshot reconnects by itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable, Optional

import pandas as pd

from ..server import layout
from ..ssh import pool as ssh_pool
from ..errors import LabdeployError
from .pgactivity import DEFAULT_THRESHOLD, ConnectionWarning, Snapshot, container_name, snapshot, summarize
from ..progress import Reporter, null_reporter

log = logging.getLogger("labdeploy.watch.sampler")

SAMPLE_COLUMNS = ["time", "ok", "error", "total", "max_connections", "warnings"]
SERIES_COLUMNS = ["time", "database", "app", "connections", "active", "idle", "idle_in_transaction", "role_limit"]


class Sampler:
    """Samples connections every `interval` seconds in a background thread.

    `frame` holds one row per database per sample, `samples` one row per sample (gaps
    included, with the error); both keep at most `max_samples` samples. `on_sample(sampler,
    snapshot_or_None)` is called after each sample (from the sampler's thread), `reporter`
    gets each new warning as a `WarningEvent` event.
    """

    def __init__(self, server, interval: float = 5.0, *, container: str = layout.POSTGRES_CONTAINER,
                 superuser: str = layout.POSTGRES_SUPERUSER, max_samples: int = 2000,
                 threshold: float = DEFAULT_THRESHOLD, persistent: bool = True,
                 on_sample: Optional[Callable[["Sampler", Optional[Snapshot]], None]] = None,
                 reporter: Optional[Reporter] = None) -> None:
        if not interval > 0:
            raise LabdeployError(f"The sampling interval {interval!r} is not a positive number of seconds.",
                                 "Use a few seconds, e.g. 5.", code="invalid.sampler.interval")
        if max_samples < 2:
            raise LabdeployError("A sampler keeps at least 2 samples.", "Keep e.g. 2000 samples.",
                                 code="invalid.sampler.max_samples")
        # A sampler outlives the call that made it: a connection it opens for a server name is
        # its own, closed by stop() (a Remote handed in stays the caller's).
        self._pool = ssh_pool.Pool()
        self.remote = self._pool.get(server)
        self.interval = float(interval)
        self.container, self.superuser, self.persistent = container_name(container), superuser, persistent
        self.threshold = threshold
        self.on_sample = on_sample
        self.reporter = reporter or null_reporter
        self._samples: deque = deque(maxlen=max_samples)   # (sample row, [series rows])
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ctl = threading.Lock()  # start/stop from different threads (a panel's buttons)
        self._thread: Optional[threading.Thread] = None
        self.last_snapshot: Optional[Snapshot] = None
        self.last_error: Optional[BaseException] = None
        self.warnings: list[ConnectionWarning] = []

    # ------------------------------------------------------------------ control

    def start(self) -> "Sampler":
        with self._ctl:
            if self.running:
                return self
            self._stop.clear()
            thread = threading.Thread(target=self._loop, daemon=True, name="labdeploy-sampler")
            thread.start()
            self._thread = thread  # only a started thread is ever visible to stop()
        return self

    def stop(self, timeout: float = 35) -> None:
        """Stop sampling; waits for a snapshot in flight to end. Safe from any thread."""
        self._stop.set()
        with self._ctl:
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._pool.close()

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def __enter__(self) -> "Sampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.sample_once()
            next_at += self.interval
            # Fixed rate; after a long stall (a reconnect) start again from now, no burst.
            next_at = max(next_at, time.monotonic())
            if self._stop.wait(max(0.0, next_at - time.monotonic())):
                break

    # ------------------------------------------------------------------ sampling

    def sample_once(self) -> Optional[Snapshot]:
        """Take one sample now (also usable without the thread). Never raises: a failure is
        recorded as a gap."""
        now = pd.Timestamp.now(tz="UTC")
        try:
            snap = snapshot(self.remote, self.container, superuser=self.superuser, persistent=self.persistent,
                            timeout=max(10.0, 3 * self.interval))
        except Exception as exc:  # noqa: BLE001 - recorded as a gap; sampling goes on
            self.last_error = exc
            msg = exc.message if isinstance(exc, LabdeployError) else f"{type(exc).__name__}: {exc}"
            with self._lock:
                self._samples.append(({"time": now, "ok": False, "error": msg, "total": pd.NA,
                                       "max_connections": pd.NA, "warnings": 0}, []))
            self._notify(None)
            return None
        summ = summarize(snap)
        warnings = snap.warnings(self.threshold)
        # Reported when a warning appears, not again while it lasts (counts move every sample).
        known = {(w.kind, w.apps[:1]) for w in self.warnings}
        new = [w for w in warnings if (w.kind, w.apps[:1]) not in known]
        self.last_snapshot, self.last_error, self.warnings = snap, None, warnings
        series = [{"time": snap.time, "database": r["database"], "app": r["app"] or r["database"],
                   "connections": r["connections"], "active": r["active"], "idle": r["idle"],
                   "idle_in_transaction": r["idle_in_transaction"], "role_limit": r["role_limit"]}
                  for _, r in summ.iterrows()]
        with self._lock:
            self._samples.append(({"time": snap.time, "ok": True, "error": "", "total": snap.total,
                                   "max_connections": snap.max_connections, "warnings": len(warnings)}, series))
        for w in new:
            try:
                self.reporter(w.event())
            except Exception:
                log.exception("reporter failed")
        self._notify(snap)
        return snap

    def _notify(self, snap: Optional[Snapshot]) -> None:
        if self.on_sample is not None:
            try:
                self.on_sample(self, snap)
            except Exception:  # a broken display must not stop the sampling
                log.exception("on_sample callback failed")

    # ------------------------------------------------------------------ results

    @property
    def samples(self) -> pd.DataFrame:
        """One row per sample: time, ok, error, total, max_connections, warnings."""
        with self._lock:
            rows = [s for s, _ in self._samples]
        df = pd.DataFrame(rows, columns=SAMPLE_COLUMNS)
        df["time"] = pd.to_datetime(df["time"], utc=True)
        return df

    @property
    def gaps(self) -> pd.DataFrame:
        s = self.samples
        return s[~s["ok"].astype(bool)].reset_index(drop=True)

    @property
    def frame(self) -> pd.DataFrame:
        """One row per database per successful sample (the time series)."""
        with self._lock:
            rows = [r for _, series in self._samples for r in series]
        df = pd.DataFrame(rows, columns=SERIES_COLUMNS)
        df["time"] = pd.to_datetime(df["time"], utc=True)
        return df

    def connections_by_app(self) -> pd.DataFrame:
        """Wide table: time x app -> connections; gap times are rows of NaN (lines break there)."""
        df = self.frame
        wide = df.pivot_table(index="time", columns="app", values="connections", aggfunc="sum") \
            if not df.empty else pd.DataFrame()
        gaps = self.gaps
        if not gaps.empty:
            blank = pd.DataFrame(index=pd.DatetimeIndex(gaps["time"]), columns=wide.columns, dtype=float)
            wide = pd.concat([wide, blank]).sort_index()
        return wide

    def plot(self, ax=None, top: int = 8, focus: Optional[str] = None, hide=()):
        """Connections per app over time (matplotlib); gaps shaded, warning threshold drawn when
        the lines come near it. `focus` (the researcher's app) is always drawn, even at 0; the
        legend sits outside the plot and the time axis reads HH:MM:SS. The apps in `hide`
        (destroyed since) are left out."""
        import matplotlib.dates as mdates

        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(8, 3.2))
        wide = self.connections_by_app()
        wide = wide.drop(columns=[a for a in hide if a in wide.columns])
        peak_all = 0.0
        if not wide.empty:
            peak = wide.max()
            order = list(peak[peak > 0].sort_values(ascending=False).index[:top])  # idle apps would only clutter
            if focus is not None and focus not in order:
                order.insert(0, focus)  # an app without connections has no rows: its line is 0
            for app in order:
                values = wide[app].astype(float) if app in wide.columns else pd.Series(0.0, index=wide.index)
                ax.plot(wide.index, values.fillna(0) if app not in wide.columns else values, label=str(app),
                        marker=".", linewidth=2.4 if app == focus else 1.2)
            peak_all = float(pd.to_numeric(peak, errors="coerce").max() or 0)
        samples = self.samples
        for t in samples.loc[~samples["ok"].astype(bool), "time"]:
            ax.axvspan(t - pd.Timedelta(seconds=self.interval / 2), t + pd.Timedelta(seconds=self.interval / 2),
                       color="#c5221f", alpha=0.15, linewidth=0)
        maxc = pd.to_numeric(samples["max_connections"], errors="coerce").dropna()
        warn = self.threshold * float(maxc.iloc[-1]) if not maxc.empty else None
        top_y = max(5.0, peak_all * 1.25)
        if warn is not None and peak_all >= warn / 2:  # near the warning line: show it, on the scale
            ax.axhline(warn, color="#f9ab00", linestyle="--", linewidth=1, label=f"{self.threshold:.0%} of max_connections")
            top_y = max(top_y, warn * 1.1)
        ax.set_ylim(0, top_y)
        ax.set_ylabel("connections")
        ax.set_title("PostgreSQL connections per app" + (" (red: no data)" if (~samples["ok"].astype(bool)).any()
                                                         else ""))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize="small")
        if not samples.empty:
            # At least a minute wide: matplotlib widens a single moment to four days, ticked at midnight.
            end = samples["time"].max() + pd.Timedelta(seconds=max(self.interval / 2, 1))
            ax.set_xlim(min(samples["time"].min(), end - pd.Timedelta(seconds=60)), end)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        ax.figure.autofmt_xdate()
        return ax
