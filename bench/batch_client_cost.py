"""Client-side cost of the batch providers: CPU and memory for N requests, from building the JSONL to mapping
the results back, against a loopback batch server (tests/batch_servers.py) whose batches complete at once.

    python bench/batch_client_cost.py                  # 100k requests: openai + anthropic provider layer, openai end to end
    python bench/batch_client_cost.py --n 20000 --cases openai-provider

Each case runs in a fresh child process (so its peak RSS is its own) and the server in another (so its CPU is not
the client's). Cases:
* `<api>-provider`: N distinct short requests through `provider.complete` all at once (what the batch driver,
  the ledger and the SDK's files/batches calls cost per request);
* `openai-bridge`: `bridge_dataset` over N instruction pairs end to end (template rendering, the call cache,
  reply parsing and the output dataset included).
Writes bench/results/batch_client_cost.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

CASES = ("openai-provider", "anthropic-provider", "openai-bridge")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(case: str, url: str, n: int) -> dict:
    from bmc_data.providers import ChatRequest, ProviderLimits, get_provider

    api, layer = case.split("-")
    base_url = f"{url}/v1" if api == "openai" else url
    limits = ProviderLimits(timeout_s=600, max_retries=2)
    rss_before = _rss_mb()
    with tempfile.TemporaryDirectory() as cache:
        provider = get_provider(f"{api}-batch", "bench-editor", base_url=base_url, api_key="sk-bench", limits=limits,
                                poll_interval_s=0.05, cache_dir=cache, progress=False)
        cpu, wall = time.process_time(), time.perf_counter()
        if layer == "provider":
            requests = [ChatRequest(messages=({"role": "user", "content": f"pair {i}: please revise this response"},),
                                    max_tokens=64) for i in range(n)]

            async def drive() -> list:
                try:
                    return await asyncio.gather(*(provider.complete(r) for r in requests))
                finally:
                    await provider.aclose()

            replies = asyncio.run(drive())
            ok = sum(1 for r in replies if r.text)
        else:
            from bridge_throughput import make_pairs

            from bmc_data import bridge_dataset

            out = bridge_dataset(make_pairs(n), task="instruction", provider=provider, cache_dir=cache, progress=False)
            ok = out["bmc_status"].count("bridged")
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    usage = provider.usage.as_dict()
    return {"case": case, "requests": n, "answered": ok, "wall_s": round(wall, 2), "client_cpu_s": round(cpu, 2),
            "client_cpu_us_per_request": round(1e6 * cpu / n, 1), "peak_rss_mb": round(_rss_mb(), 1),
            "rss_before_mb": round(rss_before, 1), "batches": usage.get("batches"),
            "batch_requests_submitted": usage.get("batch_requests_submitted")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--url", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "batch_client_cost.json"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child, args.url, args.n)), flush=True)
        return
    server = subprocess.Popen([sys.executable, str(REPO / "tests" / "batch_servers.py"), "--port", "0"],
                              stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().split()[1]
        rows = []
        for case in args.cases.split(","):
            child = subprocess.run([sys.executable, __file__, "--child", case, "--url", url, "--n", str(args.n)],
                                   capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
            if child.returncode != 0:
                raise RuntimeError(f"{case} failed:\n{child.stderr[-3000:]}")
            row = json.loads(child.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(row, flush=True)
    finally:
        server.terminate()
        server.wait()
    result = {"benchmark": "batch_client_cost", "command": "python bench/batch_client_cost.py " + " ".join(sys.argv[1:]),
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
              "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
