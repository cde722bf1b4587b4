"""Request-path benchmark: fairness beside a tiled job, dropping an abandoned tiled job, scan bombs.

    .venv/bin/python -m bench.request_path --out bench/results            # ~3-5 min on the shared 2-core CPU

Against a real `python -m service` (`service.devserver.LiveServer`) serving `deblur` with the shipped
weights (random weights of the same architecture when they are missing: same cost):

* **fairness**: one 2048² deblur (tiled at the default `DIFFIR_TILE_SIZE`) while four clients send 64²
  requests one after another; their latency percentiles against one tile's time plus their own time alone;
* **abandoned tiled job**: a 2048² request whose client closes the socket after a few tiles; how many
  tiles still run and how long until the device is free, against one tile's time;
* **scan bombs**: four ~2 MB progressive JPEG scan bombs at once plus a 32² request, with the default
  scan limit (refused from the bytes) and with the limit lifted (killed at the decode budget).

Results go to `<out>/request_path.json` and `<out>/request_path.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import socket
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from service.devserver import LiveServer, server_env
from tests.reliability.scan_bomb import scan_bomb
from tests.service.conftest import encode, gradient

PNG = {"content-type": "image/png"}


def checkpoint(tmp: Path) -> tuple[Path, str]:
    from models import DiffIRS2, get_preset, save_checkpoint
    from models.tasks import TASKS

    shipped = TASKS["deblur"].default_checkpoint_path()
    if shipped is not None and shipped.is_file():
        return shipped, "shipped weights"
    net = DiffIRS2(get_preset(TASKS["deblur"].config.name)).eval()
    return save_checkpoint(net, tmp / "deblur", {"version": "bench"}), "random weights (same architecture)"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def post(url: str, data: bytes, timeout: float = 1800) -> tuple[int | str, float, dict]:
    started = time.perf_counter()
    try:
        r = httpx.post(f"{url}/restore/deblur", content=data, headers=PNG, timeout=timeout)
    except httpx.HTTPError as exc:
        return type(exc).__name__, time.perf_counter() - started, {}
    return r.status_code, time.perf_counter() - started, dict(r.headers)


async def small_clients(url: str, data: bytes, clients: int, stop: asyncio.Event, failed: list[str]) -> list[float]:
    """Latencies of the 200 answers; anything else goes to `failed` (status and code)."""
    latencies: list[float] = []
    async with httpx.AsyncClient(timeout=300) as client:

        async def one() -> None:
            while not stop.is_set():
                started = time.perf_counter()
                r = await client.post(f"{url}/restore/deblur", content=data, headers=PNG)
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    failed.append(f"{r.status_code} {r.json().get('code')} after {time.perf_counter() - started:.1f} s")

        await asyncio.gather(*(one() for _ in range(clients)))
    return latencies


def tile_time(srv: LiveServer, window_s: float = 5.0) -> float:
    """Seconds per tile, from the tile counter over a window while a tiled job runs."""
    t0, n0 = time.monotonic(), srv.metric("diffir_tiles_total", task="deblur")
    while srv.metric("diffir_tiles_total", task="deblur") < n0 + 2 and time.monotonic() - t0 < 120:
        time.sleep(0.05)
    return (time.monotonic() - t0) / max(srv.metric("diffir_tiles_total", task="deblur") - n0, 1)


def fairness(srv: LiveServer, big: bytes, small: bytes, clients: int) -> dict:
    alone = [post(srv.url, small)[1] for _ in range(10)]
    own = statistics.median(alone)
    result: dict = {}
    failed: list[str] = []
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def scenario() -> list[float]:
        large = asyncio.ensure_future(asyncio.to_thread(post, srv.url, big))
        while srv.metric("diffir_tiles_total", task="deblur") < tiles0 + 1:
            await asyncio.sleep(0.05)
        tile_s = await asyncio.to_thread(tile_time, srv)
        result["tile_s"] = tile_s
        smalls = asyncio.ensure_future(small_clients(srv.url, small, clients, stop, failed))
        status, seconds, _ = await large
        stop.set()
        result["large_status"], result["large_s"] = status, seconds
        return await smalls

    tiles0 = srv.metric("diffir_tiles_total", task="deblur")
    latencies = loop.run_until_complete(scenario())
    loop.close()
    bound = result["tile_s"] + own
    return {
        "clients": clients,
        "small_requests": len(latencies),
        "small_not_200": failed,
        "own_time_alone_s": round(own, 4),
        "tile_s": round(result["tile_s"], 3),
        "p50_s": round(percentile(latencies, 0.5), 3),
        "p95_s": round(percentile(latencies, 0.95), 3),
        "max_s": round(max(latencies), 3),
        "bound_tile_plus_own_s": round(bound, 3),
        "p95_within_bound": percentile(latencies, 0.95) <= bound,
        "large_status": result["large_status"],
        "large_s": round(result["large_s"], 1),
    }


def abandoned(srv: LiveServer, big: bytes) -> dict:
    tiles0 = srv.metric("diffir_tiles_total", task="deblur")
    gone0 = srv.metric("diffir_rejected_total", reason="disconnected", task="deblur")
    sock = socket.create_connection(("127.0.0.1", srv.port))
    head = f"POST /restore/deblur HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {len(big)}\r\n\r\n"
    sock.sendall(head.encode() + big)
    while srv.metric("diffir_tiles_total", task="deblur") < tiles0 + 2:
        time.sleep(0.05)
    tile_s = tile_time(srv)
    sock.close()
    closed = time.monotonic()
    at_close = srv.metric("diffir_tiles_total", task="deblur")
    last_change, last = closed, at_close
    while time.monotonic() - last_change < max(5 * tile_s, 3.0):
        now = srv.metric("diffir_tiles_total", task="deblur")
        if now != last:
            last, last_change = now, time.monotonic()
        time.sleep(0.05)
    return {
        "tile_s": round(tile_s, 3),
        "tiles_before_close": int(at_close - tiles0),
        "tiles_after_close": int(last - at_close),
        "device_free_after_close_s": round(last_change - closed, 3),
        "within_one_tile": last_change - closed <= tile_s + 0.25,
        "counted_disconnected": srv.metric("diffir_rejected_total", reason="disconnected", task="deblur") - gone0,
    }


def bombs(env: dict[str, str], lifted: bool) -> dict:
    bomb = scan_bomb(2048, 2_000_000)
    extra = {"DIFFIR_MAX_JPEG_SCANS": "1000000", "DIFFIR_DECODE_TIMEOUT_S": "5"} if lifted else {}
    with LiveServer({**env, **extra}) as srv:

        async def run() -> tuple[list, tuple]:
            async with httpx.AsyncClient(timeout=120) as client:

                async def timed(data: bytes, ct: str) -> tuple[int, str, float]:
                    started = time.perf_counter()
                    r = await client.post(f"{srv.url}/restore/deblur", content=data, headers={"content-type": ct})
                    code = r.json().get("code") if r.status_code != 200 else ""
                    return r.status_code, code, time.perf_counter() - started

                flood = [asyncio.ensure_future(timed(bomb, "image/jpeg")) for _ in range(4)]
                await asyncio.sleep(0.5)
                tiny = await timed(encode(gradient(32, 32)), "image/png")
                return await asyncio.gather(*flood), tiny

        answers, tiny = asyncio.run(run())
        ready = httpx.get(f"{srv.url}/readyz").status_code
    return {
        "scan_limit": "lifted (decode budget 5 s)" if lifted else "default (64 scans)",
        "bomb_bytes": len(bomb),
        "bombs": [{"status": s, "code": c, "seconds": round(t, 2)} for s, c, t in answers],
        "small_32x32": {"status": tiny[0], "seconds": round(tiny[2], 3)},
        "readyz_after": ready,
    }


def markdown(report: dict) -> str:
    f, a = report["fairness"], report["abandoned"]
    lines = [
        "# Request path (bench/request_path.py)",
        "",
        f"Machine: {report['machine']}; model: deblur ({report['weights']}); tiles 512² (overlap 32); "
        f"extra settings: {', '.join(report['settings']) or 'none'}.",
        "",
        "## Four clients of 64² requests beside a 2048² tiled deblur",
        "",
        "| figure | value |",
        "|---|---|",
        f"| 64² request alone (median) | {f['own_time_alone_s']} s |",
        f"| one tile | {f['tile_s']} s |",
        f"| 64² latency beside the tiled job: p50 / p95 / max | {f['p50_s']} / {f['p95_s']} / {f['max_s']} s "
        f"({f['small_requests']} requests, {f['clients']} clients) |",
        f"| bound: one tile + own time | {f['bound_tile_plus_own_s']} s (p95 within: {f['p95_within_bound']}) |",
        f"| the 2048² job | {f['large_status']} in {f['large_s']} s |",
        "",
        "## A 2048² job whose client leaves",
        "",
        "| figure | value |",
        "|---|---|",
        f"| one tile | {a['tile_s']} s |",
        f"| tiles before the client left / after | {a['tiles_before_close']} / {a['tiles_after_close']} |",
        f"| device free after the client left | {a['device_free_after_close_s']} s (within one tile: "
        f"{a['within_one_tile']}) |",
        f"| counted as `disconnected` | {a['counted_disconnected']:g} |",
        "",
        "## Four ~2 MB progressive-JPEG scan bombs plus a 32² request",
        "",
        "| scan limit | bombs (status code seconds) | 32² request | /readyz after |",
        "|---|---|---|---|",
    ]
    for b in report["bombs"]:
        answers = ", ".join(f"{x['status']} {x['code']} {x['seconds']} s" for x in b["bombs"])
        tiny = f"{b['small_32x32']['status']} in {b['small_32x32']['seconds']} s"
        lines.append(f"| {b['scan_limit']} | {answers} | {tiny} | {b['readyz_after']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--set", action="append", default=[], metavar="DIFFIR_X=V", help="extra server setting")
    parser.add_argument("--skip-bombs", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, weights = checkpoint(Path(tmp))
        env = server_env(
            DIFFIR_TASKS=json.dumps({"deblur": {"checkpoint": str(ckpt)}}),
            DIFFIR_MAX_BATCH_SIZE="1",
            DIFFIR_TORCH_THREADS="2",
            DIFFIR_LOG_LEVEL="warning",
            **dict(item.split("=", 1) for item in args.set),
        )
        big = encode(gradient(args.size, args.size))
        report: dict = {
            "machine": f"{platform.processor() or platform.machine()}, 2 cores (shared)",
            "weights": weights,
        }
        with LiveServer(env) as srv:
            report["fairness"] = fairness(srv, big, encode(gradient(64, 64)), clients=4)
            report["abandoned"] = abandoned(srv, big)
        report["settings"] = args.set
        report["bombs"] = [] if args.skip_bombs else [bombs(env, lifted=False), bombs(env, lifted=True)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "request_path.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "request_path.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
