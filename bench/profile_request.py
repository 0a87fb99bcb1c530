"""Where a request's time goes in the service: one worker with the shipped models, one client
(or `--clients N`, each its own thread and keep-alive connection) sending one request at a time,
and py-spy sampling the worker. With several clients the milliseconds a request are worker CPU
time per answer under load (threads that run at once both count), beside the rows per batch.

Every sample of a thread that was running (py-spy leaves idle threads out; samples whose
innermost frame waits in select/epoll, a lock, a condition, a queue or a sleep are dropped too)
goes to one place: "image decoding" when any frame decodes or resizes an image (Pillow,
torchvision, `images.py`), "model" when any frame is in `models/` or torch, else the innermost frame
whose file belongs to a known place (the event loop, BentoML, uvicorn, our middleware, our batch
queue and tasks, pydantic, starlette, threads and futures, image decoding), else "other".
Samples whose innermost frame is uvloop's run loop are listed apart and not counted: py-spy
cannot tell its C code at work from a wait in epoll. The table gives each place's share and its
milliseconds a request (samples / rate / requests). `--rev` profiles the service of a git
revision instead of this working tree's (a before/after in two runs).

Beside the samples, wall time: the batch worker's own timing of its batches
(`seqserve_batch_duration_seconds`: the model's wall time a batch in the service) against batches
of the same size and inputs run in-process once the server has stopped (as `bench.serving`'s limit
runs them: a helper thread with one torch thread, this working tree's code), back to back as the
limit does, and asleep before each batch for as long as the batch worker idled between batches.
At one client, what a request takes beyond its batch is the HTTP stack's and the hand-offs'. The
kernel's account of the worker's busiest threads (/proc schedstat: time on a core, and time
runnable but waiting for a core) tells CPU from waiting, which py-spy's samples of "running"
threads do not.

Usage: python -m bench.profile_request [--endpoint translate|caption] [--rev REV]
       [--clients 1] [--duration 20] [--rate 250] [--out bench/results/profile_request_<endpoint>[_c<N>].json]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.service_ab import worktree
from bench.serving_load import batch_rows, histogram_totals, requests_for
from harness.server import Server

BATCH_SECONDS = "seqserve_batch_duration_seconds"

# (place, substrings of a frame's file), matched innermost frame first; "model" is decided first
PLACES = (
    ("image decoding", ("PIL/", "torchvision/", "service/images.py", "models/images.py")),
    (
        "our middleware",
        tuple(
            f"service/{name}.py"
            for name in (
                "admission",
                "access",
                "guard",
                "errors",
                "metrics",
                "connections",
                "openapi",
            )
        ),
    ),  # fmt: skip
    (
        "our batch queue and tasks",
        (
            "service/batching.py",
            "service/runtime.py",
            "service/tasks/",
            "service/service.py",
            "service/responses.py",
        ),
    ),  # fmt: skip
    ("pydantic", ("pydantic",)),
    ("starlette", ("starlette/",)),
    ("uvicorn, httptools", ("uvicorn/", "httptools")),
    ("BentoML", ("bentoml", "_bentoml_impl", "_bentoml_sdk")),
    ("OpenTelemetry, prometheus", ("opentelemetry", "prometheus_client")),
    ("threads and futures", ("anyio/", "concurrent/futures", "threading.py", "queue.py")),
    ("event loop", ("asyncio/", "uvloop")),
)
MODEL = ("models/", "torch/")  # where a frame's file starts (py-spy shortens paths), or "/" + it
TOP_STACKS = 5  # per place, in the JSON report
UVLOOP = "uvloop's C code or epoll (not counted)"
REQUESTS = 64  # distinct requests a client cycles through (sentences of the test split)
# innermost functions that wait (a lock, a condition, a queue, a sleep, select/epoll): dropped
WAITING = frozenset({"wait", "acquire", "sleep", "select", "poll", "_wait_for_tstate_lock"})


def get_args_parser() -> argparse.ArgumentParser:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--endpoint", choices=("translate", "caption"), default="translate")
    parser.add_argument("--rev", default=None, help="profile this git revision's service")
    parser.add_argument("--clients", type=int, default=1, help="concurrent clients (default: 1)")
    parser.add_argument("--duration", type=float, default=20.0, help="s sampled (default: 20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="s before (default: 3)")
    parser.add_argument("--rate", type=int, default=250, help="samples/s (default: 250)")
    parser.add_argument("--out", type=Path, default=None, help="JSON output")
    return parser


def place_of(frames: list[str]) -> str | None:
    """The place a sample's stack (outermost first) belongs to; None when it was waiting."""
    if not frames or function_of(frames[-1]) in WAITING:
        return None
    files = [file_of(frame) for frame in frames]
    if "asyncio/runners.py" in files[-1] or "uvloop" in files[-1]:
        return UVLOOP  # uvloop's C code, busy or waiting in epoll: py-spy cannot tell which
    for place, parts in PLACES[:1]:  # decoding and resizing an image call torch too
        if any(part in file for file in files for part in parts):
            return place
    if any(is_model(file) for file in files):
        return "model"
    for file in reversed(files):
        for place, parts in PLACES:
            if any(part in file for part in parts):
                return place
    return "other"


def function_of(frame: str) -> str:
    """The function of a py-spy frame, "Class.function (path/file.py:123)", without its class."""
    return frame.partition(" (")[0].rpartition(".")[2]


def file_of(frame: str) -> str:
    """The file of a py-spy frame, "function (path/file.py:123)"."""
    return frame.rpartition("(")[2].rpartition(":")[0]


def is_model(file: str) -> bool:
    """Ours (models/) or torch's, but not BentoML's own models/ package."""
    if "bentoml" in file:
        return False
    return any(file.startswith(part) or f"/{part}" in file for part in MODEL)


def places(raw: str) -> tuple[collections.Counter[str], dict[str, list[tuple[str, int]]]]:
    """py-spy's raw output (a stack and a count per line) -> busy samples per place, and each
    place's commonest innermost three frames with their samples."""
    samples: collections.Counter[str] = collections.Counter()
    ends: collections.defaultdict[str, collections.Counter[str]] = collections.defaultdict(
        collections.Counter
    )
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        found = place_of(frames)
        if found is not None:
            samples[found] += int(count)
            ends[found][" <- ".join(reversed(frames[-3:]))] += int(count)
    return samples, {place: ends[place].most_common(TOP_STACKS) for place in ends}


def client_loop(
    url: str, endpoint: str, stop: threading.Event, sent: list[float], first: int = 0
) -> None:
    """One request at a time over one connection; the end time of each 200 into `sent`."""
    request = requests_for(endpoint, REQUESTS)
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    i = first
    while not stop.is_set():
        r = request[i % len(request)]
        connection.request("POST", r.path, body=r.body, headers={"Content-Type": r.content_type})
        response = connection.getresponse()
        response.read()
        if response.status == 200:
            sent.append(time.perf_counter())
        i += 1


def inprocess_batch_ms(
    endpoint: str, model_dir: Path, batch: int, pause_s: float
) -> dict[str, list[float]]:
    """Milliseconds of each batch of `batch` consecutive inputs of `requests_for` (at least 30,
    at most 200 batches or 10 s a way, the two ways alternating in rounds of 10), run as
    `bench.serving`'s limit runs them (the same code on a helper thread with one torch thread):
    "back to back", as the limit does, and "paused", asleep `pause_s` before each batch as the
    service's batch worker is between batches (its caches cool meanwhile)."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from bench import serving_limit
    from models.checkpoint import load_model

    device = torch.device("cpu")
    work = serving_limit.inprocess_work(endpoint, load_model(model_dir, device), device, "none")
    inputs = [common.image_bytes()] if endpoint == "caption" else common.sentences(REQUESTS)

    def timed() -> dict[str, list[float]]:
        work(inputs[:batch])  # warm-up
        times: dict[str, list[float]] = {"back to back": [], "paused": []}
        started, done = time.perf_counter(), 0
        while done < 400 and (done < 60 or time.perf_counter() - started < 20):
            way = "paused" if (done // 10) % 2 else "back to back"
            first = len(times[way]) * batch
            chosen = [inputs[(first + i) % len(inputs)] for i in range(batch)]
            if way == "paused":
                time.sleep(pause_s)
            t0 = time.perf_counter()
            work(chosen)
            times[way].append((time.perf_counter() - t0) * 1000)
            done += 1
        return times

    with ThreadPoolExecutor(1) as helper:
        return serving_limit.run_on(helper, ("helper", 1), timed)


def main(args: argparse.Namespace) -> dict[str, Any]:
    suffix = f"_c{args.clients}" if args.clients > 1 else ""
    out = args.out or common.RESULTS / f"profile_request_{args.endpoint}{suffix}.json"
    report = common.environment(command_args={**vars(args), "out": str(out)})
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="seqserve-profile-")))
        place = stack.enter_context(worktree(args.rev, tmp)) if args.rev else None
        home = tmp / "bentoml"
        dirs = common.model_dirs("pretrained", tmp)
        common.make_store(dirs, home)
        model_dir = dirs["captioner" if args.endpoint == "caption" else "translator"]
        env = {"SEQSERVE_DEVICE": "cpu", "SEQSERVE_GPUS": "0", "SEQSERVE_WORKERS": "1"}
        server = Server.bentoml(home, tmp / "serve.log", env, working_dir=place)
        with server:
            server.wait_ready()
            worker = server.worker()
            if worker is None:
                sys.exit("profile_request: no BentoML worker process found")
            stop, sent = threading.Event(), []
            clients = [
                threading.Thread(
                    target=client_loop, args=(server.url, args.endpoint, stop, sent, 7 * i)
                )
                for i in range(args.clients)
            ]
            for client in clients:
                client.start()
            time.sleep(args.warmup)
            rows_before = batch_rows(server.url)
            seconds_before = histogram_totals(server.url, BATCH_SECONDS)
            threads_before = thread_times(worker.pid)
            raw = tmp / "profile.txt"
            started = time.perf_counter()
            subprocess.run(
                ["py-spy", "record", "--pid", str(worker.pid), "--duration",
                 str(int(args.duration)), "--rate", str(args.rate), "--format", "raw",
                 "--nonblocking", "--output", str(raw)],
                check=True, capture_output=True,
            )  # fmt: skip
            ended = time.perf_counter()
            rows_after = batch_rows(server.url)
            seconds_after = histogram_totals(server.url, BATCH_SECONDS)
            threads_after = thread_times(worker.pid)
            stop.set()
            for client in clients:
                client.join()
            load = common.load_average()[0]
            samples, stacks = places(raw.read_text())
        batches = rows_after[1] - rows_before[1]
        rows_per_batch = (rows_after[0] - rows_before[0]) / batches if batches else None
        same_batch = max(1, round(rows_per_batch or 1))
        batch_ms = wall_ms_a_batch(seconds_before, seconds_after)
        idle_ms = max(0.0, 1000 * (ended - started) / max(1, batches) - (batch_ms or 0))
        inprocess = inprocess_batch_ms(args.endpoint, model_dir, same_batch, idle_ms / 1000)
    done = sorted(t for t in sent if started <= t <= ended)
    gaps = [b - a for a, b in zip(done, done[1:], strict=False)]
    busy = sum(n for place, n in samples.items() if place != UVLOOP)
    per_request = 1000 / args.rate / max(1, len(done))
    rows = [
        [place, f"{100 * n / busy:.1f}%" if place != UVLOOP else "", f"{n * per_request:.2f}"]
        for place, n in samples.most_common()
    ]
    rows.append(["all busy samples", "100%", f"{busy * per_request:.2f}"])
    inprocess_ms = {way: round(statistics.mean(times), 2) for way, times in inprocess.items()}
    threads = busiest_threads(threads_before, threads_after, len(done))
    print(
        f"{args.endpoint}, {args.clients} client(s): {len(done)} requests in "
        f"{ended - started:.1f} s ({len(done) / (ended - started):.1f}/s), p50 "
        f"{1000 * statistics.median(gaps):.2f} ms between answers, {busy} busy samples, "
        f"rows per batch {rows_per_batch and round(rows_per_batch, 1)}, load {load}"
    )
    common.print_table(["where", "share of busy samples", "ms a request"], rows)
    print(
        f"wall time: {batch_ms} ms a batch in the batch worker (mean), idle {idle_ms:.2f} ms "
        f"between batches; in-process, batches of {same_batch} of the same inputs after the "
        f"server stopped, mean: {inprocess_ms['back to back']} ms back to back, "
        f"{inprocess_ms['paused']} ms after {idle_ms:.2f} ms asleep"
    )
    print(
        "the worker's busiest threads, ms a request on a core / waiting for one: "
        + ", ".join(f"{t['on_core_ms']:.2f} / {t['waiting_ms']:.2f}" for t in threads)
    )
    report.update(
        requests=len(done),
        seconds=round(ended - started, 2),
        answers_per_second=round(len(done) / (ended - started), 1),
        rows_per_batch=rows_per_batch and round(rows_per_batch, 2),
        p50_between_answers_ms=round(1000 * statistics.median(gaps), 2) if gaps else None,
        busy_samples=busy,
        samples=dict(samples),
        ms_per_request={place: round(n * per_request, 3) for place, n in samples.items()},
        batch_wall_ms=batch_ms,
        inprocess_batch=same_batch,
        idle_ms_between_batches=round(idle_ms, 2),
        inprocess_batch_mean_ms=inprocess_ms,
        busiest_threads=threads,
        top_stacks=stacks,
        load_average=load,
    )
    common.write_report(report, out)
    return report


def thread_times(pid: int) -> dict[int, tuple[int, int]]:
    """Per thread of `pid`: nanoseconds on a core and nanoseconds runnable but waiting for one
    (/proc/<pid>/task/<tid>/schedstat); threads that ended are left out."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            on_core, waiting, _ = (task / "schedstat").read_text().split()
            found[int(task.name)] = (int(on_core), int(waiting))
    return found


def busiest_threads(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], requests: int
) -> list[dict[str, float]]:
    """The threads that ran longest between two `thread_times` readings: ms on a core and ms
    waiting for one, per request, busiest first (the event loop and the batch worker lead)."""
    per_request = 1e6 * max(1, requests)
    moved = [
        (after[tid][0] - before.get(tid, (0, 0))[0], after[tid][1] - before.get(tid, (0, 0))[1])
        for tid in after
    ]
    return [
        {"on_core_ms": round(run / per_request, 3), "waiting_ms": round(wait / per_request, 3)}
        for run, wait in sorted(moved, reverse=True)[:3]
    ]


def wall_ms_a_batch(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    """Mean milliseconds a batch between two readings of the batch-seconds histogram."""
    batches = after[1] - before[1]
    return round(1000 * (after[0] - before[0]) / batches, 2) if batches else None


if __name__ == "__main__":
    main(get_args_parser().parse_args())
