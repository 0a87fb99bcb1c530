"""What `bench.serving` reports: ratios against the limit and the plain server, the table, the plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import common
from bench.serving_load import SIDES

HEADER = (
    "endpoint", "clients", "side", "req/s", "p50 ms", "p95 ms", "p99 ms", "of limit", "x simple",
    "mean batch", "load",
)  # fmt: skip


def ratios(report: dict[str, Any]) -> dict[str, Any]:
    """Ours as a fraction of the limit and as a multiple of the simple server; latency at one
    client over the in-process single-request latency."""
    out: dict[str, Any] = {}
    for endpoint, by_side in report["http"].items():
        limit = report["limit"][endpoint]
        ours, simple = by_side["bentoml"], by_side["simple"]
        out[endpoint] = {
            c: {
                "fraction_of_limit": ours[c]["throughput"] / limit["throughput"],
                "fraction_of_one_process_limit": ours[c]["throughput"] / limit["one_process"],
                "multiple_of_simple": ours[c]["throughput"] / max(simple[c]["throughput"], 1e-9),
            }
            for c in ours
        }
        if 1 in ours and ours[1]["latency_ms"]:
            # the inputs vary in cost (sentence lengths), so the like-for-like comparison is
            # percentile to percentile; p99 over the in-process median is kept as well
            ours_ms, single_ms = ours[1]["latency_ms"], limit["single_ms"]
            out[endpoint]["p99_c1_over_single"] = ours_ms["p99"] / single_ms["p50"]
            out[endpoint]["p99_c1_over_single_p99"] = ours_ms["p99"] / single_ms["p99"]
            out[endpoint]["p50_c1_over_single_p50"] = ours_ms["p50"] / single_ms["p50"]
    return out


def limit_rows(endpoint: str, limit: dict[str, Any]) -> list[list[object]]:
    """The one-process limit and, when measured, the all-cores limit."""
    single = limit["single_ms"]
    rows: list[list[object]] = [
        [
            endpoint, "-", f"limit: one process, batch {limit['best_batch']}",
            f"{limit['one_process']:.1f}", f"{single['p50']:.1f} (batch 1)", f"{single['p95']:.1f}",
            f"{single['p99']:.1f}", f"{limit['one_process'] / limit['throughput']:.2f}", "", "",
            f"{max(limit['load_average']):.2f}",
        ]
    ]  # fmt: skip
    if limit.get("parallel"):
        rows.append(
            [
                endpoint, "-",
                f"limit: {limit['processes']} processes x 1 thread, batch {limit['best_batch']}",
                f"{limit['parallel']:.1f}", "", "", "",
                f"{limit['parallel'] / limit['throughput']:.2f}", "", "", "",
            ]
        )  # fmt: skip
    return rows


def cell_row(endpoint: str, c: int, side: str, report: dict[str, Any]) -> list[object]:
    """One side at `c` clients."""
    cell = report["http"][endpoint][side][c]
    lat, limit = cell["latency_ms"], report["limit"][endpoint]
    multiple = report["ratios"][endpoint][c]["multiple_of_simple"] if side == "bentoml" else 1.0
    batch = cell.get("mean_batch")
    return [
        endpoint, c, side, f"{cell['throughput']:.1f}", f"{lat.get('p50', 0):.1f}",
        f"{lat.get('p95', 0):.1f}", f"{lat.get('p99', 0):.1f}",
        f"{cell['throughput'] / limit['throughput']:.2f}", f"{multiple:.2f}",
        f"{batch:.1f}" if batch else "", f"{max(cell['load_average']):.2f}",
    ]  # fmt: skip


def print_table(report: dict[str, Any]) -> None:
    """The markdown table of bench/README.md."""
    rows: list[list[object]] = []
    for endpoint, by_side in report["http"].items():
        rows += limit_rows(endpoint, report["limit"][endpoint])
        rows += [cell_row(endpoint, c, side, report) for c in by_side["bentoml"] for side in SIDES]
        r = report["ratios"][endpoint]
        if "p99_c1_over_single" in r:
            text = (
                f"latency at 1 client over in-process single: p50/p50 "
                f"{r['p50_c1_over_single_p50']:.2f}x, p99/p99 {r['p99_c1_over_single_p99']:.2f}x, "
                f"p99/p50 {r['p99_c1_over_single']:.2f}x"
            )
            rows.append([endpoint, 1, text, *[""] * 8])
    common.print_table(HEADER, rows)


def plot(report: dict[str, Any], path: Path) -> None:
    """Throughput against concurrency, one panel per endpoint, the limits as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    endpoints = list(report["http"])
    fig, axes = plt.subplots(1, len(endpoints), figsize=(5.5 * len(endpoints), 4), squeeze=False)
    for ax, endpoint in zip(axes[0], endpoints, strict=True):
        for side, label in (("bentoml", "BentoML service (ours)"), ("simple", "plain FastAPI")):
            cells = report["http"][endpoint][side]
            xs = [int(c) for c in cells]
            ax.plot(xs, [cells[c]["throughput"] for c in cells], marker="o", label=label)
        limit = report["limit"][endpoint]
        ax.axhline(
            limit["one_process"],
            linestyle="--",
            color="grey",
            label=f"limit: one process (batch {limit['best_batch']})",
        )
        if limit.get("parallel"):
            ax.axhline(
                limit["parallel"],
                linestyle=":",
                color="black",
                label=f"limit: {limit['processes']} processes x 1 thread",
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("captions/s" if endpoint == "caption" else "translations/s")
        ax.set_title(f"/{endpoint}, greedy")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    load = report["load_average_start"][0], report.get("load_average_end", ["?"])[0]
    fig.suptitle(f"{report['date']}  {report['machine']}  load {load[0]}-{load[1]}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
