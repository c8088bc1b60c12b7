"""``clipforge serve`` on loopback: text-search latency and requests/s at 1, 16 and 64 concurrent clients, with
micro-batching on (the default) and off (``--batch-items 1``, the reference: one query per model call), then a soak
of 200 concurrent clients mixing good and malformed requests.

    python benchmarks/serve.py                                   # ViT-B/32 random weights, 10,000 rows
    python benchmarks/serve.py --model tiny-vit --rows 10000 --seconds 10 --soak-seconds 60

The collection is written in the layout of ``clipforge.search.collection`` (random L2-normalised float16 rows,
parquet metadata pointing at 64 small PNG files, the model saved with clipforge's own ``save_pretrained``), no
index (exact search). Each server is a real ``clipforge serve DIR --port P`` subprocess; the clients are one
asyncio process with httpx, each sending its next request as soon as the last is answered (closed loop). Text
queries are drawn from 500 distinct captions. The soak mixes text, embedding and image-id requests with malformed
ones (bad JSON, k out of range, wrong types, a wrong-dimension embedding, bad base64, a decompression bomb, unknown
ids, path tricks) and counts status classes (2xx, 4xx, 5xx, transport errors), checks the server still answers at
the end, and reads its resident memory (VmRSS) at the start, middle and end. Clients and server share the machine's
cores, so on a small CPU the figures include the clients' own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("red", "green", "blue", "yellow", "small", "large", "striped", "round", "square", "shiny")
THINGS = ("bicycle", "cat", "dog", "car", "house", "tree", "boat", "cup", "chair", "lamp")


def captions(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"a {rng.choice(WORDS)} {rng.choice(WORDS)} {rng.choice(THINGS)} number {i}" for i in range(n)]


def make_collection(directory: Path, rows: int, model: str, part_size: int = 5000) -> dict[str, Any]:
    """A finished collection of ``rows`` random rows embedded 'by' a saved random-weight ``model``."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from PIL import Image

    from clipforge.api import create_model, get_text_processor
    from clipforge.checkpoints.native import save_pretrained
    from clipforge.eval.loading import load_eval_model

    torch.manual_seed(0)
    net = create_model(model)
    saved = save_pretrained(net, directory / "model", get_text_processor(net))
    eval_model, _, _ = load_eval_model(str(saved), "cpu")
    dim = int(eval_model.encode_texts(["x"]).shape[1])
    (directory / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = []
    for i in range(64):
        path = directory / "images" / f"{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(path)
        files.append(str(path))
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    texts = captions(rows, 1)
    num_parts = -(-rows // part_size)
    manifest = {"format": "clipforge-collection", "version": 1,
                "model": {"spec": str(saved), "pretrained": None, "name": model, "family": "clip",
                          "fingerprint": eval_model.fingerprint(), "dim": dim, "scoring": eval_model.scoring},
                "data": {"path": str(directory / "images"), "kind": "folder"}, "part_size": part_size,
                "num_parts": num_parts, "dtype": "float16", "modalities": ["image"], "complete": True}
    for folder in ("img_emb", "metadata", "parts"):
        (directory / folder).mkdir()
    for k in range(num_parts):
        lo, hi = k * part_size, min(rows, (k + 1) * part_size)
        np.save(directory / "img_emb" / f"img_emb_{k:04d}.npy", vectors[lo:hi].astype(np.float16))
        pq.write_table(pa.table({"row": pa.array(range(lo, hi), pa.int64()),
                                 "path": [files[i % 64] for i in range(lo, hi)], "caption": texts[lo:hi],
                                 "width": pa.array([96] * (hi - lo), pa.int32()),
                                 "height": pa.array([96] * (hi - lo), pa.int32())}),
                       directory / "metadata" / f"metadata_{k:04d}.parquet")
        (directory / "parts" / f"part_{k:04d}.json").write_text(json.dumps(
            {"part": k, "rows": hi - lo, "inputs": hi - lo, "skipped": {}, "seconds": 0.0}))
    (directory / "embed.json").write_text(json.dumps(manifest))
    return {"rows": rows, "dim": dim, "model": model, "parameters": sum(p.numel() for p in net.parameters())}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SERVE = ("import sys, argparse; from clipforge.cli import serve; p = argparse.ArgumentParser(); "
         "serve.register(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")


def start_server(directory: Path, port: int, extra: list[str]) -> subprocess.Popen[bytes]:
    """``clipforge serve DIR --port PORT`` (through the verb's own module, so it runs before main.py lists it)."""
    import httpx

    command = [sys.executable, "-c", SERVE, "serve", str(directory), "--port", str(port), "--device", "cpu", *extra]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {process.stderr.read().decode()[-2000:] if process.stderr else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not start in 180 s")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


async def closed_loop(url: str, clients: int, seconds: float, make: Any) -> dict[str, Any]:
    """``clients`` loops each sending ``make(rng)`` → (method, path, json or bytes) for ``seconds``."""
    import httpx

    latencies: list[float] = []
    statuses: dict[str, int] = {"2xx": 0, "4xx": 0, "5xx": 0, "other": 0, "transport_errors": 0}
    stop = time.perf_counter() + seconds

    async def client(i: int, http: httpx.AsyncClient) -> None:
        rng = random.Random(i)
        while time.perf_counter() < stop:
            method, path, body = make(rng)
            start = time.perf_counter()
            try:
                if isinstance(body, bytes):
                    r = await http.request(method, path, content=body, headers={"Content-Type": "application/json"})
                else:
                    r = await http.request(method, path, json=body)
            except httpx.HTTPError:
                statuses["transport_errors"] += 1
                continue
            latencies.append(time.perf_counter() - start)
            statuses[f"{r.status_code // 100}xx" if r.status_code // 100 in (2, 4, 5) else "other"] += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        began = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        elapsed = time.perf_counter() - began
    ms = sorted(1000 * x for x in latencies)
    return {"clients": clients, "requests": len(ms), "seconds": round(elapsed, 2),
            "requests_per_s": round(len(ms) / elapsed, 1),
            "p50_ms": round(statistics.median(ms), 1) if ms else None,
            "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1) if ms else None,
            "statuses": statuses}


def png_bomb(side: int = 30_000) -> bytes:
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(100_000))) + chunk(
        b"IEND", b"")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B/32", help="preset, random weights (default: ViT-B/32)")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=10.0, help="per concurrency level")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--soak-clients", type=int, default=200)
    parser.add_argument("--soak-seconds", type=float, default=60.0)
    args = parser.parse_args()

    import torch

    queries = captions(500, 2)
    out: dict[str, Any] = {"threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "coll"
        directory.mkdir()
        out["collection"] = make_collection(directory, args.rows, args.model)
        dim = out["collection"]["dim"]

        def text(rng: random.Random) -> tuple[str, str, Any]:
            return "POST", "/search", {"text": rng.choice(queries), "k": 10}

        for mode, extra in (("batched", []), ("unbatched", ["--batch-items", "1"])):
            port = free_port()
            server = start_server(directory, port, extra)
            url = f"http://127.0.0.1:{port}"
            try:
                asyncio.run(closed_loop(url, 4, 2.0, text))  # warm-up
                out[mode] = {}
                for clients in args.levels:
                    out[mode][f"clients_{clients}"] = asyncio.run(closed_loop(url, clients, args.seconds, text))
                import httpx

                out[mode]["text_batching"] = httpx.get(f"{url}/healthz").json()["batching"]["text"]
            finally:
                server.terminate()
                server.wait(30)
            print(json.dumps({mode: out[mode]}), file=sys.stderr)
        for clients in args.levels:
            b, u = out["batched"][f"clients_{clients}"], out["unbatched"][f"clients_{clients}"]
            out.setdefault("batched_vs_unbatched_rps", {})[f"clients_{clients}"] = round(
                b["requests_per_s"] / u["requests_per_s"], 2)

        bomb = base64.b64encode(png_bomb()).decode()
        good_vector = (np.ones(dim) / np.sqrt(dim)).tolist()
        bad = [("POST", "/search", b"{"), ("POST", "/search", {"text": "a", "k": 0}),
               ("POST", "/search", {"text": "a", "k": 10_000}), ("POST", "/search", {"text": 5}),
               ("POST", "/search", {"embedding": [0.1] * 7}), ("POST", "/search", {"image": "!!!"}),
               ("POST", "/search", {"image": bomb}), ("POST", "/search", {"text": "a" * 5000}),
               ("GET", f"/images/{args.rows}", None), ("GET", "/images/..%2F..%2Fetc%2Fpasswd", None),
               ("GET", "/images/-3", None), ("POST", "/classify", {"image": bomb, "labels": ["a"]}),
               ("POST", "/search", b"[" * 50_000), ("POST", "/search", {"text": "a", "image": "b"})]

        def mixed(rng: random.Random) -> tuple[str, str, Any]:
            roll = rng.random()
            if roll < 0.45:
                return text(rng)
            if roll < 0.60:
                return "POST", "/search", {"embedding": good_vector, "k": rng.randint(1, 100)}
            if roll < 0.70:
                return "GET", f"/images/{rng.randrange(args.rows)}", None
            return rng.choice(bad)

        port = free_port()
        server = start_server(directory, port, [])
        url = f"http://127.0.0.1:{port}"
        try:
            samples = [(0.0, rss_mib(server.pid))]  # before the first request, then every 5 s

            async def soak() -> dict[str, Any]:
                task = asyncio.create_task(closed_loop(url, args.soak_clients, args.soak_seconds, mixed))
                began = time.perf_counter()
                while not task.done():
                    await asyncio.wait({task}, timeout=5.0)
                    if not task.done():
                        samples.append((round(time.perf_counter() - began, 1), rss_mib(server.pid)))
                return await task

            result = asyncio.run(soak())
            samples.append((round(result["seconds"], 1), rss_mib(server.pid)))
            rss = {"start": samples[0][1], "middle": min(samples, key=lambda s: abs(s[0] - args.soak_seconds / 2))[1],
                   "end": samples[-1][1], "samples": samples}
            import httpx

            health = httpx.get(f"{url}/healthz", timeout=30)
            result.update(rss_mib=rss, alive_at_end=server.poll() is None and health.status_code == 200,
                          batching=health.json()["batching"])
            out["soak"] = result
        finally:
            server.terminate()
            server.wait(30)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
