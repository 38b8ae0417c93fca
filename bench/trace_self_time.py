#!/usr/bin/env python3
"""Self time per operator in LibTorch profiler traces (search_step_bench with
QSEARCH_TRACE_DIR set). An operator's self time is its duration less that of the
operators it called on the same thread, so the column adds up to the traced time.

  /usr/bin/python3 bench/trace_self_time.py DIR/arm0.json DIR/arm2.json [--top 25]
"""
import json
import sys
from collections import defaultdict


def self_times(path):
    with open(path) as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    by_thread = defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and "dur" in e:
            by_thread[e.get("tid")].append((float(e["ts"]), float(e["dur"]), e["name"]))
    totals = defaultdict(float)
    traced = 0.0
    for spans in by_thread.values():
        spans.sort(key=lambda s: (s[0], -s[1]))
        stack = []  # [end, name, duration, time of the operators it called]
        for ts, dur, name in spans:
            while stack and stack[-1][0] <= ts:
                end, n, d, child = stack.pop()
                totals[n] += max(0.0, d - child)
            if stack:
                stack[-1][3] += dur
            else:
                traced += dur
            stack.append([ts + dur, name, dur, 0.0])
        for end, n, d, child in stack:
            totals[n] += max(0.0, d - child)
    return totals, traced


def main(argv):
    top = 25
    if "--top" in argv:
        i = argv.index("--top")
        top = int(argv[i + 1])
        del argv[i:i + 2]
    results = [(p, *self_times(p)) for p in argv]
    names = defaultdict(float)
    for _, totals, _ in results:
        for n, t in totals.items():
            names[n] = max(names[n], t)
    header = "| operator | " + " | ".join(p.rsplit("/", 1)[-1] + " ms" for p in argv) + " |"
    print(header)
    print("|---|" + "---|" * len(argv))
    for n in sorted(names, key=lambda n: -names[n])[:top]:
        print("| %s | %s |" % (n, " | ".join("%.1f" % (r[1].get(n, 0.0) / 1000) for r in results)))
    print("| traced (top level) | %s |" % " | ".join("%.1f" % (r[2] / 1000) for r in results))


if __name__ == "__main__":
    main(sys.argv[1:])
