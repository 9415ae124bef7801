"""PNG plot of a run: throughput and latency percentiles per second (matplotlib, headless)."""

from __future__ import annotations

from bench.recorder import RunSummary


def plot_summary(summary: RunSummary, path: str) -> None:
    """Write a two-panel PNG: responses and 200s per second on top, p50/p99/max latency (log) below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # The bucket after the configured duration only holds the drain of in-flight requests: leave it out.
    timeline = [row for row in summary.timeline if row["second"] < summary.config["duration_s"]]
    seconds = [row["second"] for row in timeline]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6.5))
    top.plot(seconds, [row["requests"] for row in timeline], label="responses/s")
    top.plot(seconds, [row["ok"] for row in timeline], label="200/s", linestyle="--")
    top.set_ylabel("requests per second")
    top.set_ylim(bottom=0)
    top.legend(loc="lower right")
    top.grid(alpha=0.3)
    for key in ("p50_ms", "p99_ms", "max_ms"):
        bottom.plot(seconds, [max(row[key], 0.001) for row in timeline], label=key.removesuffix("_ms"))
    bottom.set_yscale("log")
    bottom.set_ylabel("latency (ms, from scheduled send)")
    bottom.set_xlabel("second of run")
    bottom.legend(loc="upper right")
    bottom.grid(alpha=0.3, which="both")
    config = summary.config
    fig.suptitle(
        f"{config['profile']} -> {config['target']}  ({config['mode']} loop, {config['processes']} proc)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
