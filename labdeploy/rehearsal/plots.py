"""A rehearsal's two plots (matplotlib): latency and errors against simultaneous participants,
and the server's and the app's resources against participants."""

from __future__ import annotations


def plot(result, fig=None):
    import matplotlib.pyplot as plt

    if fig is None:
        fig = plt.figure(figsize=(10, 3.6))
    left, right = fig.subplots(1, 2)
    lat = result.latency
    if len(lat):
        for q, style in (("p50", "-"), ("p95", "-"), ("p99", ":")):
            left.plot(lat.index, lat[q], style, marker="o", label=q)
        left.axhline(1.0, color="#f9ab00", linestyle="--", linewidth=1, label="1 s")
        errors = left.twinx()
        errors.bar(lat.index, lat["error_rate"] * 100, alpha=0.25, color="#c5221f", width=0.4, label="errors")
        errors.set_ylabel("errors (%)")
    left.set_xlabel("simultaneous participants")
    left.set_ylabel("latency (s)")
    left.set_title("Latency and errors")
    left.legend(loc="upper left", fontsize="small")
    res = result.resources
    if len(res):
        for column, label in (("server_cpu_cores", "server CPU (cores)"), ("app_cpu_cores", "app CPU (cores)")):
            right.plot(res.index, res[column], marker="o", label=label)
        mem = right.twinx()
        mem.plot(res.index, res["app_mem_bytes"] / 1e6, color="#777", linestyle="--", marker=".", label="app MB")
        mem.plot(res.index, res["connections"], color="#188038", linestyle=":", marker=".", label="DB connections")
        mem.set_ylabel("MB / connections")
        mem.legend(loc="lower right", fontsize="small")
    right.set_xlabel("simultaneous participants")
    right.set_ylabel("CPU cores")
    right.set_title("Resources")
    right.legend(loc="upper left", fontsize="small")
    fig.suptitle(result.sentence[:140] + ("..." if len(result.sentence) > 140 else ""), fontsize="small")
    fig.tight_layout()
    return fig
