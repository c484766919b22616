#!/usr/bin/env python3
# SPDX-License-Identifier: MIT

"""What libctx and C++20 std::stop_source execute on the shapes they share.

For each shape of bench/shapes.cc, libctx's and stop_source's, the program
runs under valgrind's callgrind at two loop counts, counting inside the
loop's function only; the difference, divided by the difference of the
counts, is what one turn of the loop executes:

- instructions: callgrind's count of instructions executed;
- atomic read-modify-writes: instructions with a lock prefix, and xchg
  with a memory operand (locked by itself on x86), found by disassembling
  every object the run executed (objdump) and counting how often callgrind
  saw each such address run.

With --bench, the matching rows of ctx_bench are timed too (minimum and
median of 9 repetitions, real time), so that one table puts time beside
the counts.  A last row counts ChildCancel's shape under a parent with a
fan-out (no C++ counterpart, not timed): more instructions than the first
row's show that the fan-out was made.
A table goes to stdout and to <out>/shapes.md.  Needs valgrind and objdump
(binutils); only the Python standard library.

  shapes.py --bin BUILD/bench/ctx_shapes --out BUILD/bench [--bench BUILD/bench/ctx_bench]
"""

import argparse
import collections
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from round2 import loadavg, machine  # noqa: E402  (the same head as round2.md)

SHAPES = [
    # (shape, ctx_bench row, what)
    ("child", "Extra/ChildCancel", "child of a live parent: make, cancel by handle, drop"),
    ("after", "Extra/AfterFunc", "AfterFunc on a live context: register, stop"),
    ("closed", "CancelTree/depth=1/Root=ClosedCanceler", "root cancelled, child born done, both dropped"),
]
LOW, HIGH = 20000, 40000


def callgrind(binary, shape, n, tmp):
    """Runs one shape n times under callgrind; returns the output file."""
    out = os.path.join(tmp, "cg.%s.%d" % (shape, n))
    # --fair-sched: valgrind runs one thread at a time; with fair turns the
    # two threads of the fanned shape's set-up meet on the parent's lock.
    subprocess.run(["valgrind", "--tool=callgrind", "--fair-sched=yes", "--toggle-collect=*measure*",
                    "--dump-instr=yes", "--dump-line=no",
                    "--callgrind-out-file=" + out, binary, shape, str(n)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def executed(path):
    """{(object, address): times executed} and the total from a callgrind file.

    Positions are instruction addresses within their object: absolute
    (0x...), relative to the previous one (+n, -n) or the same (*).  The
    line after a calls= line is the call's inclusive cost, not an
    instruction's own: its address moves the position but is not counted."""
    names = {}
    counts = collections.Counter()
    obj, last, call_cost, total = None, 0, False, 0
    for line in open(path):
        line = line.rstrip("\n")
        m = re.match(r"c?ob=\((\d+)\)(?: (.*))?$", line)
        if m:
            if m.group(2):
                names[m.group(1)] = m.group(2)
            if line.startswith("ob="):
                obj = names[m.group(1)]
            continue
        if line.startswith("calls="):
            call_cost = True
            continue
        if line.startswith("summary:"):
            total = int(line.split()[1])
            continue
        if not line or line[0] not in "0+-*":
            continue
        fields = line.split()
        pos = fields[0]
        if pos.startswith("0x"):
            last = int(pos, 16)
        elif pos[0] in "+-":
            last += int(pos)
        if call_cost:
            call_cost = False
            continue
        if len(fields) > 1:
            counts[(obj, last)] += int(fields[1])
    return counts, total


_rmw_cache = {}


def rmw_addresses(obj):
    """The addresses of an object's atomic read-modify-write instructions."""
    if obj not in _rmw_cache:
        text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", obj],
                              capture_output=True, text=True).stdout
        found = set()
        for line in text.splitlines():
            m = re.match(r"\s*([0-9a-f]+):\s+(\S+)\s*(.*)", line)
            if not m:
                continue
            op, args = m.group(2), m.group(3)
            if op == "lock" or (op.startswith("xchg") and "(" in args):
                found.add(int(m.group(1), 16))
        _rmw_cache[obj] = found
    return _rmw_cache[obj]


def count(binary, shape, tmp):
    """(instructions, read-modify-writes) per turn of the shape's loop."""
    per = []
    for n in (LOW, HIGH):
        counts, total = executed(callgrind(binary, shape, n, tmp))
        rmw = sum(c for (obj, addr), c in counts.items()
                  if obj and os.path.exists(obj) and addr in rmw_addresses(obj))
        per.append((total, rmw))
    span = HIGH - LOW
    return ((per[1][0] - per[0][0]) / span, (per[1][1] - per[0][1]) / span)


def timed(bench, rows):
    """{row name: (min, median) real ns over 9 repetitions} for ctx_bench rows.

    The minimum is given beside the median because on a shared virtual
    machine a row's repetitions can fall into two speeds."""
    pattern = "^(libctx|cxx)/(%s)/" % "|".join(re.escape(r) for r in rows)
    res = subprocess.run([bench, "--benchmark_filter=" + pattern, "--benchmark_repetitions=9",
                          "--benchmark_min_time=0.1", "--benchmark_format=json"],
                         capture_output=True, text=True, check=True)
    reps = collections.defaultdict(list)
    for b in json.loads(res.stdout)["benchmarks"]:
        if b.get("run_type") == "iteration":
            reps[b["run_name"].replace("/real_time", "")].append(b["real_time"])
    return {name: (min(t), statistics.median(t)) for name, t in reps.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", required=True, help="the ctx_shapes program")
    ap.add_argument("--out", required=True, help="directory for shapes.md")
    ap.add_argument("--bench", help="ctx_bench, to time the same rows")
    args = ap.parse_args()
    for tool in ("valgrind", "objdump"):
        if shutil.which(tool) is None:
            print("shapes: %s not found; nothing measured" % tool)
            return 0
    times = timed(args.bench, [row for _, row, _ in SHAPES]) if args.bench else {}
    m = machine()
    lines = ["# Shapes shared with C++ std::stop_source: what one operation executes", "",
             "- Commit: %s" % m["commit"],
             "- CPU: %s, %d cores; kernel %s" % (m["cpu"], m["cores"], m["kernel"]),
             "- Load average (1/5/15 min) before: %s" % loadavg(), "",
             "Per operation, from callgrind at %d and %d turns (the difference); "
             "read-modify-writes are lock-prefixed instructions and xchg with memory." % (LOW, HIGH), "",
             "| shape | libctx instructions | C++ instructions | libctx RMWs | C++ RMWs |"
             " libctx ns min / median | C++ ns min / median | C++ / libctx (medians) |",
             "|---|--:|--:|--:|--:|--:|--:|--:|"]
    with tempfile.TemporaryDirectory() as tmp:
        for shape, row, what in SHAPES:
            li, lr = count(args.bin, shape, tmp)
            ci, cr = count(args.bin, "cxx-" + shape, tmp)
            lt, ct = times.get("libctx/" + row), times.get("cxx/" + row)
            ratio = "%.2fx" % (ct[1] / lt[1]) if lt and ct else "-"
            fmt = lambda t: "%.1f / %.1f" % t if t else "-"
            lines.append("| %s (%s) | %.0f | %.0f | %.1f | %.1f | %s | %s | %s |"
                         % (row, what, li, ci, lr, cr, fmt(lt), fmt(ct), ratio))
        fi, fr = count(args.bin, "fanned", tmp)
        lines.append("| the first row's shape under a parent with a fan-out | %.0f | - | %.1f | - | - | - | - |"
                     % (fi, fr))
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    with open(os.path.join(args.out, "shapes.md"), "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
