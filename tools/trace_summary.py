"""Is a JAX training step on a GPU busy computing or waiting for its launches? A `jax.profiler` trace
(as `tools/profile_step.py --trace DIR` records it) summed up per step:

    python tools/trace_summary.py DIR [--top 12]

- the GPU: each step's span (its first op to its last; the steps are told apart by the host's
  `ExecuteThunks` events, which launch them), the time some GPU stream was busy, the number of
  GPU ops (kernels, memsets, copies) and how the idle gaps between them are spread;
- the host: where the host thread's time went (the XLA executable launching its ops, its while
  loops), the `--top` longest host events, each summed over the trace (an event inside
  another of its name on its thread, a call recorded twice, left out) and divided by the number of steps.

Needs only the standard library: it reads the trace's `*.trace.json.gz`.
"""

import argparse
import collections
import gzip
import json
import sys
from pathlib import Path

GAPS_US = (5, 20, 100, 1000)  # the gap classes' upper bounds, microseconds


def load_events(folder):
    """(GPU events, host events) of the newest trace under `folder`: complete ('X') events."""
    files = sorted(Path(folder).glob("**/*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not files:
        sys.exit(f"error: no *.trace.json.gz under {folder} (record one with tools/profile_step.py --trace DIR)")
    events = json.load(gzip.open(files[-1]))["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    complete = [e for e in events if e.get("ph") == "X"]
    gpu = [e for e in complete if "/device:GPU" in names.get(e["pid"], "")]
    host = [e for e in complete if "/host:CPU" in names.get(e["pid"], "")]
    if not gpu:
        sys.exit(f"error: {files[-1]} holds no GPU events (a trace recorded on a CPU?)")
    return gpu, host


def busy_intervals(events):
    """The union of the events' [start, end) intervals, sorted, microseconds."""
    merged = []
    for start, end in sorted((e["ts"], e["ts"] + e["dur"]) for e in events):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def steps_of(gpu, host, steps):
    """The GPU events of each step: split where the host began to launch a step (XLA's
    `ExecuteThunks` events), so that the host's time between steps is no GPU gap; without
    such events, all of them as `steps` steps."""
    launches = sorted({e["ts"] for e in host if "ExecuteThunks" in e["name"]})
    if not launches:
        return [gpu], steps
    bounds = [*launches[1:], float("inf")]
    windows = [[e for e in gpu if start <= e["ts"] < end] for start, end in zip(launches, bounds)]
    return [w for w in windows if w], len(launches)


def outermost(events):
    """The events without those inside another of the same name on the same thread (a call the
    trace records twice, nested)."""
    kept, end = [], {}
    for e in sorted(events, key=lambda e: (e["ts"], -e["dur"])):
        key = (e.get("tid"), e["name"])
        if e["ts"] + e["dur"] <= end.get(key, float("-inf")):
            continue
        end[key] = e["ts"] + e["dur"]
        kept.append(e)
    return kept


def per_step(value, steps):
    return f"{round(value / steps, 1):g}"


def summary(gpu, host, steps, top):
    """Markdown lines, times per step."""
    host = outermost(host)
    windows, steps = steps_of(gpu, host, steps)
    span = busy = 0
    gaps = []
    for events in windows:
        merged = busy_intervals(events)
        span += merged[-1][1] - merged[0][0]
        busy += sum(end - start for start, end in merged)
        gaps += [b[0] - a[1] for a, b in zip(merged, merged[1:])]
    lines = [f"{steps} steps", "", "| per step | value |", "|---|---:|",
             f"| GPU span (a step's first op to its last) | {span / steps / 1e3:.1f} ms |",
             f"| GPU busy (some stream working) | {busy / steps / 1e3:.1f} ms ({busy / span:.0%}) |",
             f"| GPU ops (kernels, memsets, copies) | {per_step(len(gpu), steps)} |"]
    bounds = (0, *GAPS_US, float("inf"))
    for low, high in zip(bounds, bounds[1:]):
        inside = [g for g in gaps if low <= g < high]
        what = f"{low}-{high} us" if high != float("inf") else f"over {low} us"
        lines.append(f"| idle gaps of {what} | {per_step(len(inside), steps)}, {sum(inside) / steps / 1e3:.1f} ms |")
    total, count = collections.Counter(), collections.Counter()
    for e in host:
        total[e["name"][:90]] += e["dur"]
        count[e["name"][:90]] += 1
    lines += ["", "| host event | ms per step | calls per step |", "|---|---:|---:|"]
    lines += [f"| `{name}` | {total[name] / steps / 1e3:.1f} | {per_step(count[name], steps)} |"
              for name, _ in total.most_common(top)]
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trace", help="the folder given to profile_step.py --trace")
    parser.add_argument("--steps", type=int, default=3,
                        help="train steps in a trace without XLA's ExecuteThunks events (profile_step.py: 3)")
    parser.add_argument("--top", type=int, default=12, help="host events listed")
    args = parser.parse_args(argv)
    print("\n".join(summary(*load_events(args.trace), args.steps, args.top)))


if __name__ == "__main__":
    main()
