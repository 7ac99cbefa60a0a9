#!/usr/bin/env python3
"""Summarises the callgrind runs of loadtest/callgrind-events.sh for one target.

usage: callgrind-summary.py TARGET BASE DOUBLE LOADED [--by-crate]

BASE: STREAMS streams without content chunks; DOUBLE: twice as many streams, without chunks;
LOADED: STREAMS streams with chunks. Each is a directory holding the target's profiles
(cg.<pid>, one per process) and the driver's report (bench.json).

Per event: (LOADED - BASE) / the extra events. Per stream: (DOUBLE - BASE) / the extra streams,
so the process's start-up cancels out. With --by-crate, both are split by where the code
comes from (callgrind_annotate's self cost, grouped by source path); code the compiler
inlined from the standard library is counted under the crate whose function it landed in.
"""

import collections
import glob
import json
import os
import re
import subprocess
import sys

REGISTRY_CRATE = re.compile(r"/registry/src/[^/]+/([A-Za-z0-9_\-]+?)-\d+\.\d+")
FIRST_PATH = re.compile(r"(?:^|[<\s(&])([a-z_][a-z0-9_]*)::")
COST_LINE = re.compile(r"\s*([\d,]+)\s+(?:\([\s\d.]+%\)\s+)?(\S+?):(.*)")


def total(run):
    """Instructions over all of the run's processes."""
    instructions = 0
    for path in glob.glob(os.path.join(run, "cg.*")):
        with open(path) as profile:
            for line in profile:
                match = re.match(r"(?:summary|totals): (\d+)", line)
                if match:
                    instructions += int(match.group(1))
                    break
    return instructions


def report(run):
    with open(os.path.join(run, "bench.json")) as file:
        return json.load(file)


def crate_of(path, function):
    if os.path.abspath(path).startswith(PROJECT + os.sep):
        return "tidegate"
    match = REGISTRY_CRATE.search(path)
    if match:
        return match.group(1).replace("-", "_")
    if path.startswith("/rustc/"):
        match = FIRST_PATH.search(function)
        crate = match.group(1) if match else "std"
        return "std/core/alloc" if crate in ("core", "alloc", "std") else crate
    if path.startswith("???"):
        return "(no source paths: a C program's own code)"
    return "libc (memcpy, malloc, syscall stubs)"


def by_crate(run):
    costs = collections.Counter()
    for path in glob.glob(os.path.join(run, "cg.*")):
        out = subprocess.run(
            ["callgrind_annotate", "--inclusive=no", "--auto=no", "--threshold=100", path],
            capture_output=True, text=True, check=True,
        ).stdout
        for line in out.splitlines():
            match = COST_LINE.match(line)
            if not match or "PROGRAM TOTALS" in line:
                continue
            costs[crate_of(match.group(2), match.group(3))] += int(match.group(1).replace(",", ""))
    return costs


def print_split(title, before, after, count):
    diff = {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)}
    whole = sum(diff.values())
    print(f"  {title}, by crate:")
    for crate, cost in sorted(diff.items(), key=lambda kv: -kv[1])[:12]:
        print(f"    {cost / count:>9.0f}  {100 * cost / whole:5.1f} %  {crate}")


def main():
    target, base, double, loaded = sys.argv[1:5]
    split = "--by-crate" in sys.argv[5:]
    streams = report(base)["streams"]["completed"]
    extra_streams = report(double)["streams"]["completed"] - streams
    extra_events = report(loaded)["throughput"]["events"] - report(base)["throughput"]["events"]
    counts = [total(run) for run in (base, double, loaded)]
    if min(counts) == 0 or extra_streams <= 0 or extra_events <= 0:
        sys.exit(f"callgrind-summary: missing profiles or no extra streams/events for {target}")
    per_event = (counts[2] - counts[0]) / extra_events
    per_stream = (counts[1] - counts[0]) / extra_streams
    print(f"{target:<12} {streams:>8} {extra_events:>10} {per_event:>12.0f} {per_stream:>12.0f}")
    if split:
        costs = [by_crate(run) for run in (base, double, loaded)]
        print_split("per event", costs[0], costs[2], extra_events)
        print_split("per stream", costs[0], costs[1], extra_streams)


PROJECT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "src"))

if __name__ == "__main__":
    main()
