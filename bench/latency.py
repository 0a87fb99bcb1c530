"""Sequential latency of one request per endpoint and decoding method against a running service.

Usage: python -m bench.latency --url http://127.0.0.1:3000 [--requests 20]
Prints the median milliseconds of /caption (a 640x480 JPEG) and /translate (one sentence) with
greedy and beam-5 decoding, one request at a time after 3 warm-up requests, and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import httpx

IMAGE = Path("tests/fixtures/images/photo_house.jpg")
METHODS = {"greedy": {"decoding": "greedy"}, "beam5": {"decoding": "beam", "beam_size": 5}}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--url",
        default="http://127.0.0.1:3000",
        help="service URL (default: http://127.0.0.1:3000)",
    )
    parser.add_argument(
        "--requests", type=int, default=20, help="timed requests per cell (default: 20)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench/results/latency.json"),
        help="JSON output (default: bench/results/latency.json)",
    )
    return parser


def requesters(client: httpx.Client) -> dict[str, Callable[[dict], httpx.Response]]:
    image = IMAGE.read_bytes()
    return {
        "caption": lambda options: client.post(
            "/caption",
            files={"image": (IMAGE.name, image, "image/jpeg")},
            data={"options": json.dumps(options)},
        ),
        "translate": lambda options: client.post(
            "/translate", json={"sentences": ["Where is the station?"], "options": options}
        ),
    }


def median_ms(send: Callable[[dict], httpx.Response], options: dict, count: int) -> float:
    for _ in range(3):
        send(options)
    times = []
    for _ in range(count):
        start = time.perf_counter()
        response = send(options)
        times.append((time.perf_counter() - start) * 1000)
        response.raise_for_status()
    return round(statistics.median(times), 1)


def main(args: argparse.Namespace) -> None:
    with httpx.Client(base_url=args.url, timeout=60) as client:
        results = {
            f"{endpoint} {method}": median_ms(send, options, args.requests)
            for endpoint, send in requesters(client).items()
            for method, options in METHODS.items()
        }
    report = {
        "url": args.url,
        "requests": args.requests,
        "load_average": os.getloadavg()[0],
        "median_ms": results,
    }
    for cell, ms in results.items():
        print(f"{cell:<20} {ms:>8.1f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
