"""Client CPU that secret redaction adds to bridging: the same `bridge_dataset` run with a registered API key
(redaction active on every reply, cache write, row and log record) and with redaction switched off, interleaved.

    python bench/redaction_overhead.py [--pairs 256] [--repeats 5]

The loopback server (tests/llm_servers.py) runs in a child process, so `time.process_time()` is the client's CPU.
Writes bench/results/redaction_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from llm_servers import server_subprocess  # noqa: E402

from bmc_data import bridge_dataset, redaction  # noqa: E402
from bmc_data.providers import ProviderLimits  # noqa: E402
from bmc_data.providers.openai_chat import OpenAIProvider  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = [{"prompt": f"Question {i}: explain why the sky is blue in a few sentences. " * 4,
             "chosen": f"Rayleigh scattering, answer {i}. " * 20, "rejected": f"Because it is, {i}. " * 10}
            for i in range(args.pairs)]
    compiled = redaction._compiled
    cpu: dict[str, list[float]] = {"redaction on": [], "redaction off": []}
    with server_subprocess(reply="tests.llm_servers:bridge_reply") as url, tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for mode in cpu:
                redaction._compiled = compiled if mode == "redaction on" else (lambda: (None, ()))
                provider = OpenAIProvider("editor", base_url=f"{url}/v1", api_key="sk-benchREDACT-0123456789abcdef",
                                          limits=ProviderLimits(max_concurrency=16))
                start = time.process_time()
                out = bridge_dataset(rows, task="instruction", provider=provider, concurrency=16, progress=False,
                                     cache_dir=Path(tmp) / f"{mode}-{repeat}")
                cpu[mode].append((time.process_time() - start) * 1000 / len(out))
    redaction._compiled = compiled
    results = {mode: {"client_cpu_ms_per_pair_median": round(statistics.median(v), 3),
                      "runs": [round(x, 3) for x in v]} for mode, v in cpu.items()}
    on, off = (results[m]["client_cpu_ms_per_pair_median"] for m in ("redaction on", "redaction off"))
    out = {"benchmark": "redaction_overhead", "command": "python bench/redaction_overhead.py",
           "pairs": args.pairs, "repeats": args.repeats, "overhead_ms_per_pair": round(on - off, 3),
           "overhead_fraction": round((on - off) / off, 4),
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                       "load_avg_1m": round(os.getloadavg()[0], 2)}, "results": results}
    path = REPO / "bench" / "results" / "redaction_overhead.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
