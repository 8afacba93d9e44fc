"""PNG plots of a run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os
import statistics
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _save(fig: Any, out: str, name: str) -> str:
    path = os.path.join(out, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return name


def latency_cdf(data: dict[str, Any], out: str) -> str:
    poll = data["poll"] * 1000
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, lat in enumerate(data["curves"]):
        n = len(lat)
        ax.plot(lat, [(k + 1) / n for k in range(n)], label=f"run {i + 1} ({n:,} deliveries)")
    ax.axvline(poll / 2 + 20, color="grey", ls=":", label="p50 target")
    ax.axvline(poll + 100, color="grey", ls="--", label="p99 target")
    ax.set_xlabel("visible upstream → received (ms)")
    ax.set_ylabel("fraction of deliveries")
    ax.set_title(f"End-to-end latency, poll interval {poll:.0f} ms")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, out, "latency_cdf.png")


def _errbars(runs: list[list[float]]) -> tuple[list[float], list[list[float]]]:
    med = [statistics.median(r) for r in runs]
    err = [[m - min(r) for m, r in zip(med, runs, strict=True)],
           [max(r) - m for m, r in zip(med, runs, strict=True)]]  # fmt: skip
    return med, err


def rss_vs_backlog(data: dict[str, Any], out: str) -> str:
    sizes = sorted(data["peaks"])
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("peaks", "peak RSS (down, then draining)"), ("down", "RSS while down")):
        med, err = _errbars([data[key][n] for n in sizes])
        ax.errorbar(sizes, med, yerr=err, marker="o", capsize=4, label=label)
    first = statistics.median(data["peaks"][sizes[0]])
    ax.axhline(first + 20, color="grey", ls="--", label=f"target: {sizes[0]:,} + 20 MB")
    ax.set_xscale("log")
    ax.set_xlabel("deliveries queued for the subscriber that is down")
    ax.set_ylabel("relay process RSS (MB)")
    ax.set_ylim(bottom=0)
    ax.set_title("Relay memory vs backlog")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out, "rss_vs_backlog.png")


def throughput_vs_concurrency(sweep: dict[int, dict[str, list[float]]], out: str) -> str:
    levels = sorted(sweep)
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("bare", "bare aiohttp client (ceiling)"), ("relay", "relay")):
        med, err = _errbars([sweep[c][key] for c in levels])
        ax.errorbar(levels, med, yerr=err, marker="o", capsize=4, label=label)
    bare = [0.9 * statistics.median(sweep[c]["bare"]) for c in levels]
    ax.plot(levels, bare, color="grey", ls="--", label="0.9 × ceiling (target)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.set_xlabel("requests in flight (max_in_flight, 1 subscriber)")
    ax.set_ylabel("deliveries / s")
    ax.set_ylim(bottom=0)
    ax.set_title("Delivery throughput vs concurrency (loopback, receiver in its own process)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out, "throughput_vs_concurrency.png")


def cost_vs_scale(data: dict[int, dict[str, list[float]]], out: str) -> str:
    """CPU (% of one core) and RSS of an idle relay against its number of accounts."""
    sizes = sorted(data)
    fig, (cpu_ax, rss_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("cpu", "relay"), ("bare_cpu", "bare aiohttp poller (same polls)")):
        med, err = _errbars([data[n][key] for n in sizes])
        cpu_ax.errorbar(sizes, med, yerr=err, marker="o", capsize=4, label=label)
    for key, label in (("rss", "relay"), ("bare_rss", "bare aiohttp poller")):
        med, err = _errbars([data[n][key] for n in sizes])
        rss_ax.errorbar(sizes, med, yerr=err, marker="o", capsize=4, label=label)
    for ax, ylabel in ((cpu_ax, "CPU (% of one core)"), (rss_ax, "RSS (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("idle accounts (one key and one subscriber each; 10,000 polled every 30 s)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    cpu_ax.set_title("CPU of an idle relay vs tenants")
    rss_ax.set_title("Memory of an idle relay vs tenants")
    return _save(fig, out, "cost_vs_scale.png")


def auto_latency(data: dict[str, Any], out: str) -> str:
    """(13) p50/p99 against the floor, per accounts on one key (poll_interval: auto)."""
    n = data["accounts"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, floor, label in (("p50", "floor50", "p50"), ("p99", "floor99", "p99")):
        med, err = _errbars(data[key])
        line = ax.errorbar(n, med, yerr=err, marker="o", capsize=4, label=f"{label}, measured")
        ax.plot(n, data[floor], ls="--", color=line[0].get_color(), label=f"{label} floor")
    ax.set_xlabel("accounts on one API key")
    ax.set_ylabel("visible upstream → received (ms)")
    ax.set_xticks(n)
    ax.set_ylim(bottom=0)
    ax.set_title("poll_interval: auto, latency vs the floor the budget allows")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out, "auto_latency.png")
