"""Human (table) and machine (JSON) renderings of a load run's RunSummary."""

from __future__ import annotations

from typing import Any

from bench.recorder import PERCENTILES, RunSummary

CPU_BOUND = 0.9
NOT_2XX_WARN_SHARE = 0.10


def summary_json(summary: RunSummary) -> dict[str, Any]:
    """Everything measured, with the histogram reduced to percentiles (ms) and the per-second timeline."""
    return {
        "config": summary.config,
        "elapsed_s": summary.elapsed_s,
        "requests": summary.requests,
        "req_per_s": summary.req_per_s,
        "events_sent": summary.events_sent,
        "events_acked": summary.events_acked,
        "events_per_s": summary.events_per_s,
        "bytes_sent": summary.bytes_sent,
        "statuses": dict(sorted(summary.statuses.items())),
        "skipped_client_overload": summary.skipped,
        "latency_ms": {f"p{p:g}": summary.percentile_ms(p) for p in PERCENTILES} | {"max": summary.max_ms},
        "generator": {
            "processes": len(summary.cpu_s),
            "cpu_busy": summary.cpu_busy,
            "max_schedule_lag_ms": summary.max_lag_s * 1000,
        },
        "timeline": summary.timeline,
        "warnings": [w for w in (status_warning(summary), generator_warning(summary)) if w],
    }


def status_warning(summary: RunSummary) -> str | None:
    """Say so loudly when many answers were not 2xx: the figures then measure rejections, not ingestion."""
    not_2xx = sum(n for status, n in summary.statuses.items() if not (status.isdigit() and status.startswith("2")))
    if not summary.requests or not_2xx <= NOT_2XX_WARN_SHARE * summary.requests:
        return None
    breakdown = ", ".join(f"{status}: {n:,}" for status, n in summary.statuses.most_common())
    warning = (
        f"WARNING: {not_2xx / summary.requests:.0%} of {summary.requests:,} answers were not 2xx ({breakdown}); "
        "these figures measure rejections, not ingestion"
    )
    if "429" in summary.statuses:
        warning += (
            ". 429 is the gateway's per-IP rate limit, and all bench load comes from one IP: "
            "start the gateway under test with `gateway serve --rate-limit-ip off`"
        )
    return warning


def generator_warning(summary: RunSummary) -> str | None:
    """Say so when the generator, not the server, was the bottleneck (it shares the 2 cores)."""
    busy = [b for b in summary.cpu_busy if b >= CPU_BOUND]
    if not busy:
        return None
    return (
        f"note: {len(busy)}/{len(summary.cpu_busy)} generator process(es) were >= {CPU_BOUND:.0%} CPU-busy; "
        "the client (which shares this machine's cores with the server) limited these figures"
    )


def summary_table(summary: RunSummary) -> str:
    """A fixed-width report: throughput, latency percentiles, status codes, generator load."""
    config = summary.config
    mode = (
        f"open loop @ {config['rate']:g} req/s"
        if config["mode"] == "open"
        else (f"closed loop, {config['connections']} connections")
    )
    lines = [
        f"target   {config['target']}   profile {config['profile']}   {mode}   "
        f"{config['processes']} process(es)",
        f"elapsed  {summary.elapsed_s:8.2f} s",
        f"requests {summary.requests:>10,}   {summary.req_per_s:>10,.0f} req/s",
        f"events   {summary.events_acked:>10,} acked of {summary.events_sent:,} sent   "
        f"{summary.events_per_s:>10,.0f} events/s",
        f"sent     {summary.bytes_sent / 1e6:10.1f} MB",
        "latency  "
        + "  ".join(f"p{p:g} {summary.percentile_ms(p):.2f} ms" for p in PERCENTILES)
        + f"  max {summary.max_ms:.2f} ms",
        "statuses " + "  ".join(f"{k}: {v:,}" for k, v in sorted(summary.statuses.items())),
        "generator cpu "
        + " ".join(f"{b:.0%}" for b in summary.cpu_busy)
        + f"   max schedule lag {summary.max_lag_s * 1000:.1f} ms",
    ]
    if summary.skipped:
        lines.append(
            f"skipped  {summary.skipped:,} requests (more than max-pending in flight: client overload)"
        )
    lines += [w for w in (generator_warning(summary), status_warning(summary)) if w]
    return "\n".join(lines)
