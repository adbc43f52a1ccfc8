"""How long `python -m bmc_data bridge` takes to give up on a run that cannot succeed, with the default limits
(7 attempts, 1 s base backoff), against a loopback server.

    python bench/fail_fast.py [--rows 32] [--repeats 3]

Cases: a refused port, a server answering 401 to every request, a server answering 404 (unknown model), and, as the
reference of a run that does succeed, a server that answers every request. Each case is the whole CLI in a
subprocess (imports included: `import-only` is `python -c "import bmc_data.__main__, bmc_data.bridging.bridge"`), median of
`--repeats`. Writes bench/results/fail_fast.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from llm_servers import Fault, LLMServer, bridge_reply  # noqa: E402


def _run(command: list[str], env: dict[str, str]) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    return time.perf_counter() - start, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, dict[str, float | int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "pairs.jsonl"
        source.write_text("".join(json.dumps({"prompt": f"Q{i}?", "chosen": f"Good {i}.", "rejected": f"Bad {i}."})
                                  + "\n" for i in range(args.rows)))
        env = {**os.environ, "OPENAI_API_KEY": "sk-benchFAILFAST-0123456789", "HF_HUB_OFFLINE": "1"}

        def bridge(url: str, run: int) -> list[str]:
            return [sys.executable, "-m", "bmc_data", "bridge", "--source", str(source), "--task", "instruction",
                    "--provider", "openai", "--model", "editor", "--base-url", url, "--quiet",
                    "--out", f"{tmp}/out-{run}", "--cache-dir", f"{tmp}/cache-{run}"]

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            refused = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
        with LLMServer(fault_fn=lambda i, b: Fault.error(401, "invalid api key")) as s401, \
                LLMServer(fault_fn=lambda i, b: Fault.error(404, "model not found")) as s404, \
                LLMServer(reply=bridge_reply) as ok:
            cases = {"import-only": None, "refused port": refused, "HTTP 401": s401.openai_base_url,
                     "HTTP 404": s404.openai_base_url, "working server (reference)": ok.openai_base_url}
            times: dict[str, list[float]] = {name: [] for name in cases}
            codes: dict[str, int] = {}
            run = 0
            for _ in range(args.repeats):  # round-robin, so the shared machine's load falls on every case alike
                for name, url in cases.items():
                    run += 1
                    command = [sys.executable, "-c", "import bmc_data.__main__, bmc_data.bridging.bridge"] if url is None \
                        else bridge(url, run)
                    seconds, code = _run(command, env)
                    times[name].append(seconds)
                    codes[name] = code
            for name in cases:
                results[name] = {"median_s": round(statistics.median(times[name]), 2), "exit_code": codes[name],
                                 "runs_s": [round(t, 2) for t in times[name]]}
            results["HTTP 401"]["server_requests"] = s401.call_count // args.repeats
            results["HTTP 404"]["server_requests"] = s404.call_count // args.repeats
    out = {"rows": args.rows, "repeats": args.repeats, "python": platform.python_version(),
           "cpus": os.cpu_count(), "results": results}
    path = REPO / "bench" / "results" / "fail_fast.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    for name, r in results.items():
        print(f"{name:<28} {r['median_s']:>6.2f} s  exit {r['exit_code']}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
