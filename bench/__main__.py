"""Run every benchmark and print a table of ratios (`make bench`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from bench import api, bus, containers, device, gateway, memory, proxy, served, soak, sse

logger = logging.getLogger(__name__)


def main() -> None:
    """Run the benchmarks; ratios >= 1 mean PyEdge is as fast / as small as the baseline."""
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    benchmarks: dict[str, Callable[[float], dict[str, Any] | list[dict[str, Any]]]] = {
        "api": api.run,
        "served": served.run,
        "bus": bus.run,
        "memory": lambda _scale: memory.run(),
        "device": device.run,
        "containers": containers.run,
        "gateway": gateway.run,
        "proxy": proxy.run,
        "sse": sse.run,
    }
    known = ", ".join(benchmarks)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"only these: {known} (all)")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(benchmarks))
    if unknown:
        parser.error(f"no benchmark {', '.join(unknown)}; there are {known}")
    scale = 0.1 if args.quick else 1.0
    results: list[dict[str, Any]] = []
    for name, run in benchmarks.items():
        if args.names and name not in args.names:
            continue
        result = run(scale)
        # A benchmark returns one result or a list of them.
        results.extend(result if isinstance(result, list) else [result])
    if args.json:
        print(json.dumps(results, indent=2))  # noqa: T201  (the CLI's output)
        return
    for result in results:
        target = result.get("target")
        verdict = "" if target is None else f"  target {target:.2f} {_verdict(result)}"
        print(  # noqa: T201
            f"{result['name']:<28} pyedge {result['pyedge']:>10.1f} {result['unit']:<8} "
            f"baseline {result['baseline']:>10.1f}  ratio {result['ratio']:.2f}{verdict}  "
            f"({result['what']})"
        )


def _verdict(result: dict[str, Any]) -> str:
    """'met' or 'MISSED': the ratio against the row's target (ratios: higher is better)."""
    return "met" if result["ratio"] >= result["target"] else "MISSED"


if __name__ == "__main__":
    # `python -m bench soak ...` is the long run (bench/soak.py), never part of `make bench`.
    if sys.argv[1:2] == ["soak"]:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        soak.main(sys.argv[2:])
    else:
        logging.basicConfig(level=logging.WARNING)
        main()
