"""Print a markdown table of a pytest-benchmark JSON file's ``extra_info`` (for RESULTS.md)."""

import json
import sys


def main(path: str) -> None:
    data = json.load(open(path))
    print(f"machine: {data.get('machine_info', {}).get('node', '?')}, "
          f"date: {data.get('datetime', '?')}")
    rows = []
    for b in data["benchmarks"]:
        e = b.get("extra_info", {})
        rows.append((b["group"] or "", b["name"], e.get("us"), e.get("GBps"), e.get("TFLOPs"),
                     e.get("note", "")))
    print("| group | benchmark | us (median) | GB/s | TFLOP/s | note |")
    print("|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r[0], r[1])):
        print("| " + " | ".join("" if v is None else str(v) for v in r) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
