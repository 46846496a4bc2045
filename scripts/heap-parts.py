#!/usr/bin/env python3
"""Bytes per socket by part, from a dhat heap profile of the gateway.

usage: scripts/heap-parts.py dhat-heap.json SOCKETS [--top N]

Takes the live heap at its global peak (dhat's t-gmax; with sockets held idle that is the
moment they are all connected), groups allocation sites by task spawns (whose allocation is the task's whole future) or by
the innermost phx-gateway source line on their stack, and prints
bytes per socket for each group. Sites with no phx-gateway frame (e.g. the runtime's own
start-up) are grouped by their outermost frame.
"""
import json
import re
import sys
from collections import defaultdict

import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
# Our source files; other crates' frames name paths relative to their own roots.
OURS = {
    os.path.relpath(os.path.join(d, f), ROOT)
    for d, _, fs in os.walk(os.path.join(ROOT, "src"))
    for f in fs
    if f.endswith(".rs") and f not in ("lib.rs", "main.rs")
}


def location(frame):
    # "0x55d1...: Socket::new (src/socket/mod.rs:70:9)"
    m = re.search(r"\(([^():]+):\d+:\d+\)$", frame)
    return m.group(1) if m else None


def classify(frames):
    for f in frames:
        m = re.search(r"new_task<(?:tracing::instrument::Instrumented<)?([\w:]+)", f)
        if m:
            return "task future: " + m.group(1).replace("phx_gateway::", "").replace("::{async_fn_env#0}", "")
    for f in frames:
        loc = location(f)
        if loc in OURS:
            name = f.split(": ", 1)[-1].split(" (", 1)[0]
            name = re.sub(r"<.*>", "", name)
            return f"{loc.replace('src/', '')}: {name}"
    return "elsewhere: " + (frames[-1].split(": ", 1)[-1] if frames else "?")


def main():
    path, sockets = sys.argv[1], int(sys.argv[2])
    top = int(sys.argv[sys.argv.index("--top") + 1]) if "--top" in sys.argv else 25
    data = json.load(open(path))
    ftbl = data["ftbl"]
    groups = defaultdict(lambda: [0, 0])
    total = 0
    for pp in data["pps"]:
        gb, gbk = pp.get("gb", 0), pp.get("gbk", 0)
        if gb == 0:
            continue
        frames = [ftbl[i] for i in pp["fs"]]
        g = groups[classify(frames)]
        g[0] += gb
        g[1] += gbk
        total += gb
    print(f"live heap at its peak: {total / 1024 / 1024:.1f} MiB, "
          f"{total / sockets:.0f} bytes per socket over {sockets} sockets")
    print(f"{'bytes/socket':>12} {'blocks/socket':>13}  part")
    rows = sorted(groups.items(), key=lambda kv: -kv[1][0])
    for name, (gb, gbk) in rows[:top]:
        print(f"{gb / sockets:12.0f} {gbk / sockets:13.2f}  {name}")
    rest = sum(gb for _, (gb, _) in rows[top:])
    print(f"{rest / sockets:12.0f} {'':13}  ({len(rows) - top} other sites)")


if __name__ == "__main__":
    main()
