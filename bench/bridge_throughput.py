"""Bridging throughput against a loopback OpenAI-compatible server with injected latency.

    python bench/bridge_throughput.py                     # end to end through bmc_data.bridge_dataset
    python bench/bridge_throughput.py --layer provider    # OpenAIProvider.complete() alone
    python bench/bridge_throughput.py --layer transport   # bare async HTTP client: the floor on this machine
    python bench/bridge_throughput.py --layer bridge,peer --levels 64:512 --repeats 5   # next to a hand-written peer

The peer is what a user would write by hand: a plain `openai.AsyncOpenAI` client and an `asyncio.Semaphore`,
one `chat.completions.create` per pair with the same rendered prompt, reading the reply text (no cache, no
parsing, no dataset). The summary reports bridge_dataset's pairs/s and client CPU per pair relative to it.

The server (tests/llm_servers.py) runs in a child process, so `time.process_time()` here is the client's CPU
only. Every request waits `--latency-ms` on the server, so the ideal rate is concurrency / latency; the
benchmark reports pairs/s, the fraction of that ideal, client CPU milliseconds per pair and the server's CPU per
pair (it shares the machine's cores). Every row runs `--repeats` times (default 3), round-robin over all rows so
that the shared machine's changing load falls on every row alike, and reports the median. End to end, each
pair is one editor call (instruction task, scripted `<revised>` reply) plus template rendering, reply parsing,
the on-disk call cache (a fresh one per run: every call is a miss and a write) and building the dataset.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from llm_servers import server_subprocess  # noqa: E402

from bmc_data.providers import ChatRequest, ProviderLimits  # noqa: E402
from bmc_data.providers.openai_chat import OpenAIProvider  # noqa: E402

DEFAULT_LEVELS = "1:64,16:256,64:512"


def make_pairs(n: int) -> list[dict[str, str]]:
    return [{
        "prompt": f"Explain in two sentences why the sky looks blue at noon (variant {i}).",
        "chosen": "Sunlight scatters off air molecules, and blue light scatters most (Rayleigh scattering). "
                  "So blue light reaches our eyes from every direction of the sky.",
        "rejected": f"The sky is blue because it reflects the ocean (variant {i}).",
    } for i in range(n)]


def provider_for(url: str, concurrency: int) -> OpenAIProvider:
    limits = ProviderLimits(max_concurrency=max(concurrency, 1), timeout_s=30, max_retries=2)
    return OpenAIProvider("bench-editor", base_url=f"{url}/v1", api_key="sk-bench", limits=limits)


def run_bridge(url: str, concurrency: int, n: int) -> tuple[float, float, dict[str, Any]]:
    from bmc_data import bridge_dataset

    provider = provider_for(url, concurrency)
    with tempfile.TemporaryDirectory() as cache_dir:
        cpu, wall = time.process_time(), time.perf_counter()
        out = bridge_dataset(make_pairs(n), task="instruction", provider=provider, concurrency=concurrency,
                             cache_dir=cache_dir, progress=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    statuses = {s: out["bmc_status"].count(s) for s in set(out["bmc_status"])}
    if statuses != {"bridged": n}:
        raise RuntimeError(f"expected every pair bridged, got {statuses}")
    return wall, cpu, {"statuses": statuses, "usage": provider.usage.as_dict()}


def run_provider(url: str, concurrency: int, n: int) -> tuple[float, float, dict[str, Any]]:
    provider = provider_for(url, concurrency)
    requests = [ChatRequest(messages=({"role": "user", "content": f"pair {i}: please revise this response"},))
                for i in range(n)]

    async def drive() -> None:
        queue = iter(requests)

        async def worker() -> None:
            for request in queue:
                await provider.complete(request)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        await provider.aclose()

    cpu, wall = time.process_time(), time.perf_counter()
    asyncio.run(drive())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall, cpu, {"usage": provider.usage.as_dict()}


def run_transport(url: str, concurrency: int, n: int) -> tuple[float, float, dict[str, Any]]:
    """The same POSTs with the bare async HTTP client the SDK is built on: what any client pays here."""
    try:
        import httpx2 as httpx  # what the installed openai SDK uses
    except ImportError:  # pragma: no cover
        import httpx
    bodies = [{"model": "bench-editor", "messages": [{"role": "user", "content": f"pair {i}: please revise this response"}],
               "max_tokens": 1024, "temperature": 0.0} for i in range(n)]

    async def drive() -> None:
        queue = iter(bodies)
        async with httpx.AsyncClient(base_url=f"{url}/v1", verify=False,
                                     limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100)) as client:
            async def worker() -> None:
                for body in queue:
                    response = await client.post("/chat/completions", json=body)
                    response.json()

            await asyncio.gather(*(worker() for _ in range(concurrency)))

    cpu, wall = time.process_time(), time.perf_counter()
    asyncio.run(drive())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall, cpu, {}


def run_peer(url: str, concurrency: int, n: int) -> tuple[float, float, dict[str, Any]]:
    """A hand-written peer: AsyncOpenAI + Semaphore, one create() per pair with the template's messages."""
    import openai

    from bmc_data.bridging.templates import load_template

    template = load_template("instruction")
    pairs = make_pairs(n)

    async def drive() -> list[str]:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-bench", max_retries=2, timeout=30)
        semaphore = asyncio.Semaphore(concurrency)

        async def one(pair: dict[str, str]) -> str:
            async with semaphore:
                messages = template.render(prompt=pair["prompt"], chosen=pair["chosen"], rejected=pair["rejected"])
                completion = await client.chat.completions.create(model="bench-editor", messages=messages,
                                                                  max_tokens=2048, temperature=0.0)
                return completion.choices[0].message.content or ""

        try:
            return await asyncio.gather(*(one(p) for p in pairs))
        finally:
            await client.close()

    cpu, wall = time.process_time(), time.perf_counter()
    replies = asyncio.run(drive())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if not all("<revised>" in r for r in replies):
        raise RuntimeError("the peer got unexpected replies")
    return wall, cpu, {}


def peer_comparison(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """bridge_dataset relative to the hand-written peer at each concurrency both ran (goal at 64: >= 0.95x pairs/s,
    <= 1.2x client CPU per pair)."""
    out = []
    for bridge in (r for r in rows if r["layer"] == "bridge"):
        peer = next((r for r in rows if r["layer"] == "peer" and r["concurrency"] == bridge["concurrency"]
                     and r["pairs"] == bridge["pairs"]), None)
        if peer is None:
            continue
        out.append({"concurrency": bridge["concurrency"], "pairs": bridge["pairs"],
                    "bridge_pairs_per_s": bridge["pairs_per_s"], "peer_pairs_per_s": peer["pairs_per_s"],
                    "throughput_ratio": round(bridge["pairs_per_s"] / peer["pairs_per_s"], 3),
                    "bridge_cpu_ms_per_pair": bridge["client_cpu_ms_per_pair"],
                    "peer_cpu_ms_per_pair": peer["client_cpu_ms_per_pair"],
                    "cpu_ratio": round(bridge["client_cpu_ms_per_pair"] / peer["client_cpu_ms_per_pair"], 3)})
    return out


def _child_pids() -> list[int]:
    pids: list[int] = []
    for children in Path("/proc/self/task").glob("*/children"):
        pids += [int(pid) for pid in children.read_text().split()]
    return pids


def server_cpu_s(pids: list[int]) -> float | None:
    """CPU seconds (user + system) used so far by the server process (Linux /proc; None elsewhere)."""
    try:
        total = 0
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
        return total / os.sysconf("SC_CLK_TCK") if pids else None
    except (OSError, ValueError, IndexError):
        return None


def _median_row(group: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput, with the median CPU figures and every run's figures alongside."""
    by_rate = sorted(group, key=lambda r: r["pairs_per_s"])
    row = dict(by_rate[(len(by_rate) - 1) // 2])
    for name in ("client_cpu_ms_per_pair", "server_cpu_ms_per_pair"):
        values = [r[name] for r in group if r[name] is not None]
        row[name] = round(statistics.median(values), 3) if values else None
    row["runs"] = [{k: r[k] for k in ("wall_s", "fraction_of_ideal", "client_cpu_ms_per_pair",
                                      "server_cpu_ms_per_pair", "load_avg_1m")} for r in group]
    return row


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| layer | concurrency | pairs | pairs/s | ideal pairs/s | fraction of ideal | client CPU ms/pair | server CPU ms/pair |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        server = r.get("server_cpu_ms_per_pair")
        lines.append(f"| {r['layer']} | {r['concurrency']} | {r['pairs']} | {r['pairs_per_s']:.1f} | "
                     f"{r['ideal_pairs_per_s']:.0f} | {100 * r['fraction_of_ideal']:.1f}% | {r['client_cpu_ms_per_pair']:.2f} | "
                     f"{'n/a' if server is None else f'{server:.2f}'} |")
    return "\n".join(lines)


def warm_up(url: str) -> None:
    """First use imports lazily loaded modules (SDK types, datasets): keep that out of the measurement."""
    run_transport(url, 1, 2)
    run_provider(url, 1, 2)
    run_bridge(url, 2, 2)
    run_peer(url, 2, 2)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layer", default="all",
                        help="bridge, peer, provider, transport, a comma list of them, or all (default)")
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--levels", default=DEFAULT_LEVELS, help="concurrency:requests,... (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of every row; the median is reported")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "bridge_throughput.json"))
    args = parser.parse_args(argv)
    levels = [tuple(int(x) for x in level.split(":")) for level in args.levels.split(",")]
    runners = {"bridge": run_bridge, "peer": run_peer, "provider": run_provider, "transport": run_transport}
    layers = list(runners) if args.layer == "all" else args.layer.split(",")
    unknown = set(layers) - set(runners)
    if unknown:
        parser.error(f"--layer: unknown {sorted(unknown)}; choose from {sorted(runners)} or all")
    latency = args.latency_ms / 1000.0
    runs: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    load_at_start = os.getloadavg()[0]
    with server_subprocess(latency_ms=args.latency_ms, reply="llm_servers:bridge_reply") as url:
        server_pids = _child_pids()  # the server shares the machine's cores: its CPU is reported too
        warm_up(url)
        # Repeats go round all layers and levels in turn, so that a change in the machine's load (it is shared)
        # falls on every row alike; each row reports the median run.
        for repeat in range(args.repeats):
            for layer in layers:
                for concurrency, n in levels:
                    server_before = server_cpu_s(server_pids)
                    wall, cpu, extra = runners[layer](url, concurrency, n)
                    server_after = server_cpu_s(server_pids)
                    ideal = concurrency / latency
                    run = {
                        "layer": layer, "concurrency": concurrency, "pairs": n, "wall_s": round(wall, 3),
                        "pairs_per_s": round(n / wall, 2), "ideal_pairs_per_s": round(ideal, 2),
                        "fraction_of_ideal": round(n / wall / ideal, 4),
                        "client_cpu_ms_per_pair": round(1000 * cpu / n, 3),
                        "server_cpu_ms_per_pair": None if server_before is None or server_after is None
                        else round(1000 * (server_after - server_before) / n, 3),
                        "load_avg_1m": round(os.getloadavg()[0], 2),
                        **extra,
                    }
                    runs.setdefault((layer, concurrency, n), []).append(run)
                    print(f"[{repeat + 1}/{args.repeats}] {layer:<9} concurrency {concurrency:>3}  {n:>4} pairs  "
                          f"{run['pairs_per_s']:>7.1f} pairs/s  {100 * run['fraction_of_ideal']:5.1f}% of ideal  "
                          f"{run['client_cpu_ms_per_pair']:.2f} ms CPU/pair (server {run['server_cpu_ms_per_pair']} ms)  "
                          f"load {run['load_avg_1m']:.2f}", flush=True)
    rows = [_median_row(group) for group in runs.values()]
    result = {
        "benchmark": "bridge_throughput",
        "command": "python bench/bridge_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "latency_ms": args.latency_ms,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_avg_1m_at_start": round(load_at_start, 2), "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
        "results": rows,
        "peer_comparison": peer_comparison(rows),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown_table(rows))
    for c in result["peer_comparison"]:
        print(f"concurrency {c['concurrency']}: bridge_dataset {c['throughput_ratio']:.3f}x the peer's pairs/s, "
              f"{c['cpu_ratio']:.3f}x its client CPU per pair")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
