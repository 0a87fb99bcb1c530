"""Sequential latency of one request per endpoint and decoding method against a running service.

Usage: python -m bench.latency --url http://127.0.0.1:3000 [--requests 20]
Prints the median milliseconds of /caption (a 640x480 JPEG) and /translate (one sentence) with
greedy and beam-5 decoding, one request at a time after 3 warm-up requests, and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics

from bench import common
from harness.load import Request, caption_request, closed_loop, translate_request

METHODS = {"greedy": {"decoding": "greedy"}, "beam5": {"decoding": "beam", "beam_size": 5}}


def get_args_parser() -> argparse.ArgumentParser:
    parser = common.argument_parser(__doc__)
    parser.add_argument(
        "--url",
        default="http://127.0.0.1:3000",
        help="service URL (default: http://127.0.0.1:3000)",
    )
    parser.add_argument(
        "--requests", type=int, default=20, help="timed requests per cell (default: 20)"
    )
    common.add_out_argument(parser, "latency.json")
    return parser


def cells() -> dict[str, Request]:
    """Each endpoint with each decoding method."""
    image = common.image_bytes()
    return {
        f"{endpoint} {method}": (
            caption_request(image, options, common.IMAGE.name)
            if endpoint == "caption"
            else translate_request(["Where is the station?"], options)
        )
        for endpoint in ("caption", "translate")
        for method, options in METHODS.items()
    }


def median_ms(url: str, request: Request, count: int) -> float:
    """Median latency of `count` requests sent one at a time, after 3 unmeasured ones."""
    answers = asyncio.run(closed_loop(url, [request], clients=1, count=3 + count))
    if set(answers.statuses()) != {200}:
        raise RuntimeError(f"{request.path} answered {dict(answers.statuses())}")
    return round(statistics.median(a.latency_ms for a in answers.answers[3:]), 1)


def main(args: argparse.Namespace) -> None:
    results = {
        cell: median_ms(args.url, request, args.requests) for cell, request in cells().items()
    }
    report = {
        "url": args.url,
        "requests": args.requests,
        "load_average": common.load_average()[0],
        "median_ms": results,
    }
    for cell, ms in results.items():
        print(f"{cell:<20} {ms:>8.1f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
