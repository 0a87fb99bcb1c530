"""What `bench.serving` reports: ratios against the limit, the combined limit (model and framework
ceiling) and the plain server, the table, the plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import common
from bench.serving_load import CEILING_OF, SIDES

HEADER = (
    "endpoint", "clients", "side", "req/s", "p50 ms", "p95 ms", "p99 ms", "of limit", "combined",
    "of combined", "x simple", "mean batch", "load",
)  # fmt: skip
LABELS = {
    "bentoml": "bentoml",
    "simple": "plain FastAPI",
    "bentoml_noop": "bentoml, no model (ceiling)",
    "bentoml_noop_bare": "bentoml, no model, our middleware off",
    "simple_noop": "plain FastAPI, no model (ceiling)",
}


def combined_limit(model: float, framework: float) -> float:
    """Requests/s when each request costs 1/model of the model's time and 1/framework of the
    HTTP stack's, on the same cores: 1 / (1/a + 1/b)."""
    return 1 / (1 / model + 1 / framework)


def ratios(report: dict[str, Any]) -> dict[str, Any]:
    """Ours as a fraction of the limit and as a multiple of the simple server; both servers as a
    fraction of their combined limit (the all-cores limit with their own framework ceiling at
    the same concurrency); latency at one client over the in-process single-request latency,
    and over that plus the framework's round trip."""
    out: dict[str, Any] = {}
    for endpoint, by_side in report["http"].items():
        limit = report["limit"][endpoint]
        ours, simple = by_side["bentoml"], by_side["simple"]
        out[endpoint] = {}
        for c in ours:
            combined = {
                side: combined_limit(limit["throughput"], by_side[ceiling][c]["throughput"])
                for side, ceiling in CEILING_OF.items()
            }
            out[endpoint][c] = {
                "fraction_of_limit": ours[c]["throughput"] / limit["throughput"],
                "fraction_of_one_process_limit": ours[c]["throughput"] / limit["one_process"],
                "multiple_of_simple": ours[c]["throughput"] / max(simple[c]["throughput"], 1e-9),
                "combined_limit": combined,
                "fraction_of_combined": {
                    side: by_side[side][c]["throughput"] / combined[side] for side in CEILING_OF
                },
            }
        if 1 in ours and ours[1]["latency_ms"]:
            out[endpoint].update(latency_ratios(ours[1], by_side["bentoml_noop"][1], limit))
    return out


def latency_ratios(ours: dict, noop: dict, limit: dict[str, Any]) -> dict[str, float]:
    """At one client. The inputs vary in cost (sentence lengths), so the like-for-like
    comparison is percentile to percentile; p99 over the in-process median is kept as well."""
    ours_ms, single_ms = ours["latency_ms"], limit["single_ms"]
    found = {
        "p99_c1_over_single": ours_ms["p99"] / single_ms["p50"],
        "p99_c1_over_single_p99": ours_ms["p99"] / single_ms["p99"],
        "p50_c1_over_single_p50": ours_ms["p50"] / single_ms["p50"],
    }
    if noop.get("latency_ms"):  # what is left once the model and the framework are paid
        expected = single_ms["p50"] + noop["latency_ms"]["p50"]
        found["p50_c1_single_plus_noop_ms"] = expected
        found["p50_c1_over_single_plus_noop_ms"] = ours_ms["p50"] - expected
    return found


def limit_rows(endpoint: str, limit: dict[str, Any]) -> list[list[object]]:
    """The one-process limit and, when measured, the all-cores limit."""
    single = limit["single_ms"]
    rows: list[list[object]] = [
        [
            endpoint, "-", f"limit: one process, batch {limit['best_batch']}",
            f"{limit['one_process']:.1f}", f"{single['p50']:.1f} (batch 1)", f"{single['p95']:.1f}",
            f"{single['p99']:.1f}", f"{limit['one_process'] / limit['throughput']:.2f}", "", "",
            "", "", f"{max(limit['load_average']):.2f}",
        ]
    ]  # fmt: skip
    if limit.get("parallel"):
        rows.append(
            [
                endpoint, "-",
                f"limit: {limit['processes']} processes x 1 thread, batch {limit['best_batch']}",
                f"{limit['parallel']:.1f}", "", "", "",
                f"{limit['parallel'] / limit['throughput']:.2f}", "", "", "", "", "",
            ]
        )  # fmt: skip
    return rows


def cell_row(endpoint: str, c: int, side: str, report: dict[str, Any]) -> list[object]:
    """One side at `c` clients; the combined limit and the fraction of it for the servers with
    models, the fraction of the limit for every side but the ceilings."""
    cell = report["http"][endpoint][side][c]
    lat, limit = cell["latency_ms"], report["limit"][endpoint]
    ratio = report["ratios"][endpoint][c]
    multiple = {"bentoml": f"{ratio['multiple_of_simple']:.2f}", "simple": "1.00"}.get(side, "")
    combined, of_combined = "", ""
    if side in CEILING_OF:
        combined = f"{ratio['combined_limit'][side]:.1f}"
        of_combined = f"{ratio['fraction_of_combined'][side]:.2f}"
    of_limit = f"{cell['throughput'] / limit['throughput']:.2f}" if side in CEILING_OF else ""
    batch = cell.get("mean_batch")
    return [
        endpoint, c, LABELS[side], f"{cell['throughput']:.1f}", f"{lat.get('p50', 0):.1f}",
        f"{lat.get('p95', 0):.1f}", f"{lat.get('p99', 0):.1f}", of_limit, combined, of_combined,
        multiple, f"{batch:.1f}" if batch else "", f"{max(cell['load_average']):.2f}",
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
            if "p50_c1_single_plus_noop_ms" in r:
                text += (
                    f"; p50 {r['p50_c1_over_single_plus_noop_ms']:+.1f} ms over in-process "
                    f"single + no-model round trip ({r['p50_c1_single_plus_noop_ms']:.1f} ms)"
                )
            rows.append([endpoint, 1, text, *[""] * (len(HEADER) - 3)])
    common.print_table(HEADER, rows)


def plot(report: dict[str, Any], path: Path) -> None:
    """Throughput against concurrency, one panel per endpoint, the limits as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    endpoints = list(report["http"])
    fig, axes = plt.subplots(1, len(endpoints), figsize=(5.5 * len(endpoints), 4), squeeze=False)
    for ax, endpoint in zip(axes[0], endpoints, strict=True):
        for side in SIDES:
            cells = report["http"][endpoint][side]
            xs = [int(c) for c in cells]
            style = {"marker": "o"} if side in CEILING_OF else {"marker": ".", "alpha": 0.5}
            ax.plot(xs, [cells[c]["throughput"] for c in cells], label=LABELS[side], **style)
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
