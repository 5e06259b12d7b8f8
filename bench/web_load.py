"""How the web app holds up under many people at once: searches and thumbnails, p50/p95/max.

    python bench/web_load.py [--clients 50] [--photos 200] [--time-limit 120]

Builds an index of ``--photos`` images from ../shared/datasets/unsplash-1k/images
(generated photo-like images where that is absent) with the tiny test model
(tests/data/clipdex-tiny.json, random weights: no real weights are needed, the
server's behaviour is what is measured; ``--arch ViT-B-32`` gives queries the real
model's cost, still with random weights), starts a real uvicorn server on
127.0.0.1 in another process, and runs:

1. one client alone: the baseline of each route;
2. ``--clients`` clients at once, each doing ``--searches`` searches and
   ``--thumbs`` thumbnails (of photos nobody asked for yet: each one is made).

Everything stays on loopback; the run is bounded by request count and by
``--time-limit`` seconds. ``--app-file`` loads ``create_app`` from another file
(an older app.py) to compare versions on the same machine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parents[1]
DATASET = REPO / ".." / "shared" / "datasets" / "unsplash-1k" / "images"
TINY_CONFIG = REPO / "tests" / "data" / "clipdex-tiny.json"
QUERIES = ["dog in the snow", "beach -people", "a city street at night", "red car", "mountains at dawn",
           "a bowl of food", "2*forest + fog", "people walking", "a cat on a sofa", "boats in a harbour",
           "sunset over the sea", "a portrait", "flowers", "a desk with a laptop", "snowy trees"]
REQUEST_TIMEOUT_S = 60.0


# -- the server (a separate process, so clients and server do not share a GIL) ----------------
def serve(index_dir: str, port: int, model: dict[str, str], app_file: str | None) -> None:
    import uvicorn

    from clipdex import Index

    index = Index.open(index_dir, **model)
    index.encoder.encode_texts(["warm up"])  # as `clipdex serve` does
    if app_file:
        import importlib.util

        spec = importlib.util.spec_from_file_location("clipdex_bench_app", app_file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        app = module.create_app(index)
    else:
        from clipdex.web import create_app

        app = create_app(index)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# -- building the index ----------------------------------------------------------------------
def build_index(work: Path, photos: int, arch: str | None) -> tuple[Path, dict[str, str], str, list[int]]:
    """(index folder, the model's Index.open options, where the photos came from, photo ids)."""
    import open_clip
    import torch

    folder = work / "photos"
    folder.mkdir()
    source = DATASET.resolve() if DATASET.is_dir() else None
    images = sorted(source.glob("*.jpg"))[:photos] if source else []
    if images:
        for image in images:
            os.symlink(image, folder / image.name)
        origin = f"{len(images)} photos of {source}"
    else:
        sys.path.insert(0, str(REPO))
        from tests.images import write_photos

        write_photos(folder, photos)
        origin = f"{photos} generated photo-like images (no {DATASET})"
    torch.manual_seed(0)
    if arch:  # a standard architecture with random weights: the real model's cost, no download
        weights = work / f"{arch}.pt"
        torch.save(open_clip.create_model(arch, pretrained=None).state_dict(), weights)
        model = {"model": arch, "weights": str(weights)}
    else:
        open_clip.add_model_config(TINY_CONFIG)
        weights = work / "clipdex-tiny.pt"
        torch.save(open_clip.create_model("clipdex-tiny", pretrained=None).state_dict(), weights)
        model = {"model_config": str(TINY_CONFIG), "weights": str(weights)}
    from clipdex import Index

    with Index.open(work / "index", create=True, **model) as index:
        index.add(folder)
        ids = [int(i) for i in index.searchable().ids]
    return work / "index", model, origin, ids


# -- clients -------------------------------------------------------------------------------------
class Client:
    """One person: a keep-alive connection, requests one after another."""

    def __init__(self, port: int, deadline: float) -> None:
        self.port = port
        self.deadline = deadline
        self.conn: http.client.HTTPConnection | None = None
        self.timings: list[tuple[str, float, int]] = []  # (route, seconds, status)

    def get(self, route: str, path: str) -> bytes | None:
        if time.monotonic() > self.deadline:
            return None
        for attempt in range(2):  # a dropped keep-alive connection is reopened once
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT_S)
            start = time.perf_counter()
            try:
                self.conn.request("GET", path)
                response = self.conn.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    self.timings.append((route, time.perf_counter() - start, 0))
                    return None
                continue
            self.timings.append((route, time.perf_counter() - start, response.status))
            return body
        return None

    def run(self, searches: int, thumb_ids: list[int], offset: int) -> None:
        thumbs_at = {round((i + 1) * searches / (len(thumb_ids) + 1)) for i in range(len(thumb_ids))}
        pending = list(thumb_ids)
        for i in range(searches):
            query = QUERIES[(offset + i) % len(QUERIES)]
            self.get("/api/search", "/api/search?" + urlencode({"q": query, "k": 48}))
            if i + 1 in thumbs_at and pending:
                self.get("/thumb/{id}", f"/thumb/{pending.pop()}")
        for file_id in pending:
            self.get("/thumb/{id}", f"/thumb/{file_id}")
        if self.conn is not None:
            self.conn.close()


def run_phase(port: int, clients: int, searches: int, thumbs: int, ids: list[int], deadline: float,
              ) -> tuple[list[tuple[str, float, int]], float]:
    people = [Client(port, deadline) for _ in range(clients)]
    start = threading.Barrier(clients + 1)

    def work(n: int) -> None:
        start.wait()
        people[n].run(searches, ids[n * thumbs:(n + 1) * thumbs], n)

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(work, n) for n in range(clients)]
        start.wait()
        began = time.perf_counter()
        for f in futures:
            f.result()
        wall = time.perf_counter() - began
    return [t for p in people for t in p.timings], wall


# -- reporting -----------------------------------------------------------------------------------
def cpu_description() -> str:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]
    shown = " ".join(f for f in wanted if f in flags) or "none of " + "/".join(wanted)
    return f"{model}, {os.cpu_count()} logical CPUs; flags: {shown}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def table(name: str, timings: list[tuple[str, float, int]], wall: float) -> list[str]:
    lines = [f"{name}: {len(timings)} requests in {wall:.1f} s = {len(timings) / wall:.1f} requests/s",
             f"  {'route':<14} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'errors':>7}"]
    for route in sorted({r for r, _, _ in timings}):
        ok = [s * 1000 for r, s, status in timings if r == route and status == 200]
        errors = sum(1 for r, _, status in timings if r == route and status != 200)
        if ok:
            lines.append(f"  {route:<14} {len(ok):>5} {statistics.median(ok):>8.1f} {percentile(ok, 0.95):>8.1f} "
                         f"{max(ok):>8.1f} {errors:>7}")
        else:
            lines.append(f"  {route:<14} {0:>5} {'-':>8} {'-':>8} {'-':>8} {errors:>7}")
    return lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(port: int, proc: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/api/status")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the server did not answer within {seconds:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--searches", type=int, default=10, help="searches per client")
    parser.add_argument("--thumbs", type=int, default=2, help="thumbnails per client")
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds for both phases together")
    parser.add_argument("--baseline-rounds", type=int, default=3, help="how many clients' work the lone client does")
    parser.add_argument("--arch", help="an open_clip architecture (e.g. ViT-B-32) with random weights instead "
                                       "of the tiny test model: the real model's cost per query")
    parser.add_argument("--app-file", help="load create_app from this file (e.g. an older app.py)")
    parser.add_argument("--serve", nargs=3, metavar=("INDEX", "PORT", "MODEL_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), json.loads(args.serve[2]), args.app_file)
        return
    needed = (args.clients + args.baseline_rounds) * args.thumbs
    photos = max(args.photos, needed)
    work = Path(tempfile.mkdtemp(prefix="clipdex-web-load-"))
    env = {**os.environ, "CLIPDEX_HOME": str(work / "home"), "PYTHONPATH": str(REPO)}
    os.environ["CLIPDEX_HOME"] = env["CLIPDEX_HOME"]
    proc = None
    try:
        began = time.perf_counter()
        index_dir, model, origin, ids = build_index(work, photos, args.arch)
        print(f"index: {origin}, built in {time.perf_counter() - began:.1f} s", flush=True)
        port = free_port()
        command = [sys.executable, __file__, "--serve", str(index_dir), str(port), json.dumps(model)]
        if args.app_file:
            command += ["--app-file", str(Path(args.app_file).resolve())]
        proc = subprocess.Popen(command, env=env)
        wait_for(port, proc, 120)
        deadline = time.monotonic() + args.time_limit
        print(f"machine: {cpu_description()}")
        print(f"model: {args.arch or 'clipdex-tiny'} (random weights); python {platform.python_version()}; "
              f"server: uvicorn, one process, on 127.0.0.1:{port}"
              + (f"; app from {args.app_file}" if args.app_file else ""))
        lone, lone_wall = run_phase(port, 1, args.searches * args.baseline_rounds,
                                    args.thumbs * args.baseline_rounds, ids, deadline)
        crowd, crowd_wall = run_phase(port, args.clients, args.searches, args.thumbs,
                                      ids[args.thumbs * args.baseline_rounds:], deadline)
        print()
        print("\n".join(table("1 client (baseline)", lone, lone_wall)))
        print()
        print("\n".join(table(f"{args.clients} clients at once ({args.searches} searches + {args.thumbs} "
                              "thumbnails each)", crowd, crowd_wall)))
        if time.monotonic() > deadline:
            print(f"\nstopped at the {args.time_limit:.0f}-second limit: the counts above are what finished")
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
