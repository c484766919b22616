#!/usr/bin/env python3
# SPDX-License-Identifier: MIT

"""libctx side by side with Go's context package and C++20 std::stop_source.

Runs, one after the other on the same machine:
  1. Go's own benchmarks: go test -run '^$' -bench . -benchmem context
     (Go 1.19's src/context/benchmark_test.go; Go is installed with apt-get
     when missing and we are root), and bench/go_extra (extra shapes)
  2. bench/ctx_bench (Google Benchmark): the libctx and C++ counterparts
  3. bench/ctx_bench_static, the cheap checks only: the same code against
     the static library, to show what the call through the PLT costs
  (1-3 in --reps rounds, medians over the rounds), then
  4. bench/ctx_bench --count-allocs: libctx's allocations per op
  5. bench/ctx_scale and bench/scale_go/scale.go: the scale figures
and prints one table (also written as <out>/report.md) and a bar chart of
the ratios (<out>/perf.png, with gnuplot).  Only the Python standard
library is used.

  report.py --bench BIN --bench-static BIN --scale BIN --go-scale FILE --out DIR
            [--reps 3] [--min-time 0.2] [--go-benchtime 200ms] [--quick]
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC_ROOT = os.path.dirname(HERE)

# Every benchmark of Go 1.19's src/context/benchmark_test.go, in file order.
# (Go name, libctx name, C++ name or None, comparable with Go?)
ROWS = [("CommonParentCancel", "CommonParentCancel", "CommonParentCancel", True)]
ROWS += [("WithTimeout/concurrency=%d" % c, "WithTimeout/concurrency=%d" % c, None, True)
         for c in (40, 4000, 400000)]
ROWS += [("CancelTree/depth=%d/Root=%s" % (d, r),) * 3 + (True,)
         for d in (1, 10, 100, 1000) for r in ("Background", "OpenCanceler", "ClosedCanceler")]
ROWS += [("CheckCanceled/Err",) * 3 + (True,), ("CheckCanceled/Done",) * 3 + (True,),
         ("ContextCancelDone",) * 3 + (True,)]
ROWS += [("DeepValueNewGoRoutine/depth=%d" % d, "DeepValueNewThread/depth=%d" % d, None, False)
         for d in (10, 20, 30, 50, 100)]
ROWS += [("DeepValueSameGoRoutine/depth=%d" % d,) * 3 + (True,) for d in (10, 20, 30, 50, 100)]

# Benchmarks that Go 1.19's file does not have.  The Go column, where there
# is one, comes from bench/go_extra/extra_test.go.
# (label, Go name, libctx name, C++ name); a name of None: no such column.
EXTRA_ROWS = [
    ("BareAtomicLoad (the floor for a check)", None, "=BareAtomicLoad", None),
    ("CheckCanceled/ErrCall (ctx_err as an exported call)", None, "CheckCanceled/ErrCall",
     "CheckCanceled/Err"),
    ("Extra/Spin200 (CommonParentCancel's busy loop alone)", "Extra/Spin200",
     "=Extra/Spin200", None),
    ("Extra/CommonParentCancelNoSpin (parallel)", "Extra/CommonParentCancelNoSpin",
     "Extra/CommonParentCancelNoSpin", "Extra/CommonParentCancelNoSpin"),
    ("Extra/ChildCancel (create + cancel + free)", "Extra/ChildCancel", "Extra/ChildCancel",
     "Extra/ChildCancel"),
    ("Extra/WithValue (create + free)", "Extra/WithValue", "Extra/WithValue",
     "Extra/WithValue"),
    ("Extra/WithTimeout (create + cancel + free)", "Extra/WithTimeout", "Extra/WithTimeout",
     None),
    ("Extra/AfterFunc (register + stop; Go 1.21+)", None, "Extra/AfterFunc",
     "Extra/AfterFunc"),
    ("Extra/Value100/Values/Top (100 value levels, the key at the top)",
     "Extra/Value100/Values/Top", "Extra/Value100/Values/Top", "Extra/Value100/Values/Top"),
    ("Extra/Value100/Values/EachKey (100 value levels, each key in turn)",
     "Extra/Value100/Values/EachKey", "Extra/Value100/Values/EachKey", "Extra/Value100/Values/EachKey"),
    ("Extra/Value100/Values/Absent (100 value levels, an absent key)",
     "Extra/Value100/Values/Absent", "Extra/Value100/Values/Absent", "Extra/Value100/Values/Absent"),
    ("Extra/Value100/Interleaved/Top (100 value levels over cancel levels, the key at the top)",
     "Extra/Value100/Interleaved/Top", "Extra/Value100/Interleaved/Top", "Extra/Value100/Interleaved/Top"),
    ("Extra/Value100/Interleaved/EachKey (100 value levels over cancel levels, each key in turn)",
     "Extra/Value100/Interleaved/EachKey", "Extra/Value100/Interleaved/EachKey", "Extra/Value100/Interleaved/EachKey"),
    ("Extra/Value100/Interleaved/Absent (100 value levels over cancel levels, an absent key)",
     "Extra/Value100/Interleaved/Absent", "Extra/Value100/Interleaved/Absent", "Extra/Value100/Interleaved/Absent"),
    ("Extra/Value100/Values/Build (the 100-value chain made and dropped)",
     "Extra/Value100/Values/Build", "Extra/Value100/Values/Build", "Extra/Value100/Values/Build"),
    ("Extra/CancelWide1000 (root with 1,000 children, cancelled)", "Extra/CancelWide1000",
     "Extra/CancelWide1000", "Extra/CancelWide1000"),
    ("ErrOK (Go 1.24+)", None, "ErrOK", "ErrOK"),
    ("ErrCanceled (Go 1.24+)", None, "ErrCanceled", "ErrCanceled"),
    ("ErrOKParallel (Go 1.24+)", None, "ErrOKParallel", "ErrOKParallel"),
    ("ErrCanceledParallel (Go 1.24+)", None, "ErrCanceledParallel", "ErrCanceledParallel"),
    ("ErrCanceledParallelDistinct (Go 1.24+)", None, "ErrCanceledParallelDistinct",
     "ErrCanceledParallelDistinct"),
]

STATIC_FILTER = r"^(libctx/(CheckCanceled|ContextCancelDone|Err)|BareAtomicLoad)"
STATIC_ROWS = ["CheckCanceled/Err", "CheckCanceled/ErrCall", "CheckCanceled/Done",
               "ContextCancelDone", "ErrOK", "ErrCanceled", "ErrOKParallel",
               "ErrCanceledParallel", "ErrCanceledParallelDistinct"]

# Scale figures: (label, key in ctx_scale output, key in scale.go output, unit)
SCALE_ROWS = [
    ("cancel ctx: bytes requested per context", "mem.cancel.bytes", "mem.cancel.avg_bytes", "B"),
    ("cancel ctx: allocations per context", "mem.cancel.allocs", "mem.cancel.avg_allocs", ""),
    ("cancel ctx: bytes malloc really uses", "mem.cancel.malloc_bytes", None, "B"),
    ("cancel ctx under a cancel parent: bytes", "mem.cancel_linked.avg_bytes",
     "mem.cancel_linked.avg_bytes", "B"),
    ("cancel ctx under a cancel parent: allocations", "mem.cancel_linked.avg_allocs",
     "mem.cancel_linked.avg_allocs", ""),
    ("timer ctx: bytes requested (the node)", "mem.timer.bytes", None, "B"),
    ("timer ctx: allocations (the node)", "mem.timer.allocs", None, ""),
    ("timer ctx: bytes malloc really uses (the node)", "mem.timer.malloc_bytes", None, "B"),
    ("timer ctx: bytes incl. timer structures, avg of 10,000 live", "mem.timer.avg_bytes",
     "mem.timer.avg_bytes", "B"),
    ("timer ctx: allocations, avg of 10,000 live", "mem.timer.avg_allocs",
     "mem.timer.avg_allocs", ""),
    ("value ctx: bytes requested", "mem.value.bytes", "mem.value.avg_bytes", "B"),
    ("value ctx: allocations", "mem.value.allocs", "mem.value.avg_allocs", ""),
    ("without-cancel ctx: bytes", "mem.without.bytes", None, "B"),
    ("AfterFunc registration: bytes", "mem.afterfunc.bytes", None, "B"),
    ("1M live timeouts under one parent: create", "timeouts.create", "timeouts.create", "ns/op"),
    ("1M live timeouts: cancel each by its handle", "timeouts.cancel_each",
     "timeouts.cancel_each", "ns/op"),
    ("1M live timeouts: cancel all through the parent", "timeouts.cancel_parent",
     "timeouts.cancel_parent", "ns/op"),
    ("1M live timeouts: free (Go: garbage collector)", "timeouts.free", None, "ns/op"),
    ("2,000 deadlines due among 1M pending (1 h away): lateness p50", "fire_pending.p50", None,
     "us"),
    ("2,000 deadlines due among 1M pending: lateness p99", "fire_pending.p99", None, "us"),
    ("2,000 deadlines due among 1M pending: lateness max", "fire_pending.max", None, "us"),
    ("1M pending deadlines over 2 s, AfterFunc: lateness p50", "fire.p50", None, "us"),
    ("1M pending deadlines, AfterFunc: lateness p99", "fire.p99", None, "us"),
    ("1M pending deadlines, AfterFunc: lateness max", "fire.max", None, "us"),
    ("1M pending deadlines, done state watched: lateness p50", "fire_state.p50", None, "us"),
    ("1M pending deadlines, done state watched: lateness p99", "fire_state.p99", None, "us"),
    ("root with 1M children (wide): build", "tree.wide.build", "tree.wide.build", "ns/op"),
    ("root with 1M children (wide): cancel the root", "tree.wide.cancel_total",
     "tree.wide.cancel_total", "ms"),
    ("root with 1M children (wide): cancel, per descendant", "tree.wide.cancel",
     "tree.wide.cancel", "ns"),
    ("chain of 1M (deep): build", "tree.deep.build", "tree.deep.build", "ns/op"),
    ("chain of 1M (deep): cancel the root", "tree.deep.cancel_total",
     "tree.deep.cancel_total", "ms"),
    ("chain of 1M (deep): cancel, per descendant", "tree.deep.cancel", "tree.deep.cancel", "ns"),
    ("1,000 waiters on one ctx: the cancel call", "waiters.one.cancel_call",
     "waiters.one.cancel_call", "us"),
    ("1,000 waiters on one ctx: wake-up p50", "waiters.one.p50", "waiters.one.p50", "us"),
    ("1,000 waiters on one ctx: wake-up p99", "waiters.one.p99", "waiters.one.p99", "us"),
    ("1,000 waiters on one ctx: wake-up max", "waiters.one.max", "waiters.one.max", "us"),
    ("1,000 waiters, each on its own child: wake-up p50", "waiters.children.p50",
     "waiters.children.p50", "us"),
    ("1,000 waiters, each on its own child: wake-up p99", "waiters.children.p99",
     "waiters.children.p99", "us"),
    ("1,000 waiters, each on its own child: wake-up max", "waiters.children.max",
     "waiters.children.max", "us"),
    ("floor: 1,000 threads on a bare futex word: wake-up p50", "waiters.raw_futex.p50", None,
     "us"),
    ("floor: 1,000 threads on a bare futex word: wake-up max", "waiters.raw_futex.max", None,
     "us"),
]

GO_TARGET = 5.0  # libctx at least 5x faster than Go
CXX_TARGET = 1.0  # no slower than std::stop_source


def log(msg):
    print("bench-report: " + msg, file=sys.stderr, flush=True)


def run(cmd, **kw):
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, **kw).stdout


# ---------------------------------------------------------------------------
# Go

def find_go():
    go = shutil.which("go")
    if go:
        return go
    for cand in sorted(os.listdir("/usr/lib")) if os.path.isdir("/usr/lib") else []:
        p = os.path.join("/usr/lib", cand, "bin", "go")
        if cand.startswith("go") and os.access(p, os.X_OK):
            return p
    if os.geteuid() != 0:
        sys.exit("bench-report: Go is not installed and we are not root; install it with\n"
                 "    sudo apt-get install -y golang-go\nand run again.")
    log("Go is missing: apt-get install -y golang-go")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if subprocess.run(["apt-get", "install", "-y", "golang-go"], env=env).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=True)
        subprocess.run(["apt-get", "install", "-y", "golang-go"], env=env, check=True)
    go = shutil.which("go")
    if not go:
        sys.exit("bench-report: golang-go installed but `go` is not on PATH")
    return go


def go_env(out):
    env = dict(os.environ)
    env["GOFLAGS"] = ""          # no user flags (-race, -count...) in the measurement
    env["GOTOOLCHAIN"] = "local"  # never download another toolchain (Go 1.21+)
    home = env.get("HOME", "")
    if not home or not os.access(home, os.W_OK):
        env["GOCACHE"] = os.path.join(out, "go-cache")
    return env


GO_LINE = re.compile(r"^Benchmark(\S+)\s+\d+\s+([\d.]+) ns/op(?:\s+([\d.]+) B/op\s+([\d.]+) allocs/op)?")


def parse_go(text, prefix=""):
    res = {}
    for line in text.splitlines():
        m = GO_LINE.match(line)
        if not m:
            continue
        name = prefix + re.sub(r"-\d+$", "", m.group(1))  # the -GOMAXPROCS suffix
        res[name] = {"ns": float(m.group(2)),
                     "B": float(m.group(3)) if m.group(3) is not None else None,
                     "allocs": float(m.group(4)) if m.group(4) is not None else None}
    return res


def run_go_bench(go, out, benchtime, rnd, extra_dir):
    """One round of Go's own benchmarks, then of bench/go_extra."""
    env = go_env(out)
    goroot = subprocess.run([go, "env", "GOROOT"], env=env, check=True, stdout=subprocess.PIPE,
                            text=True).stdout.strip()
    text = run([go, "test", "-run", "^$", "-bench", ".", "-benchmem", "-benchtime", benchtime,
                "-count", "1", "context"], cwd=os.path.join(goroot, "src"), env=env)
    with open(os.path.join(out, "go-bench.%d.txt" % rnd), "w") as f:
        f.write(text)
    res = parse_go(text)
    if extra_dir and os.path.isdir(extra_dir):
        env["GO111MODULE"] = "off"  # a lone package with standard imports only
        text = run([go, "test", "-run", "^$", "-bench", ".", "-benchmem", "-benchtime",
                    benchtime, "-count", "1"], cwd=extra_dir, env=env)
        with open(os.path.join(out, "go-extra.%d.txt" % rnd), "w") as f:
            f.write(text)
        res.update(parse_go(text, "Extra/"))
    return res


def go_version(go, out):
    return subprocess.run([go, "version"], env=go_env(out), stdout=subprocess.PIPE,
                          text=True).stdout.strip()


def medians(rounds):
    """{name: {ns, B, allocs}} per round -> the median of each field over rounds."""
    names = []
    for r in rounds:
        names += [n for n in r if n not in names]
    res = {}
    for n in names:
        got = [r[n] for r in rounds if n in r]
        if any("error" in g for g in got):
            res[n] = next(g for g in got if "error" in g)
            continue
        res[n] = {}
        for k in ("ns", "B", "allocs"):
            vals = [g[k] for g in got if g.get(k) is not None]
            res[n][k] = statistics.median(vals) if vals else None
        # The spread of the rounds, shown beside the median: a figure whose
        # rounds differ by more than 2x is flagged, not averaged away.
        ns = [g["ns"] for g in got if g.get("ns") is not None]
        res[n]["ns_min"] = min(ns) if ns else None
        res[n]["ns_max"] = max(ns) if ns else None
    return res


def fmt_spread(v):
    """ns/op with the spread of its rounds: 'median (min-max)', (!) past 2x."""
    if not v or v.get("ns") is None:
        return fmt_ns(None)
    lo, hi = v.get("ns_min"), v.get("ns_max")
    if lo is None or hi is None or lo == hi:
        return fmt_ns(v["ns"])
    flag = " (!)" if lo > 0 and hi > 2 * lo else ""
    return "%s (%s–%s)%s" % (fmt_ns(v["ns"]), fmt_ns(lo), fmt_ns(hi), flag)


def run_go_scale(go, out, script, quick):
    env = go_env(out)
    env["GO111MODULE"] = "off"  # a lone file with standard imports only
    cmd = [go, "run", script] + (["-quick"] if quick else [])
    text = run(cmd, cwd=os.path.dirname(script), env=env)
    with open(os.path.join(out, "go-scale.txt"), "w") as f:
        f.write(text)
    return parse_scale(text)


# ---------------------------------------------------------------------------
# Google Benchmark

UNIT_NS = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}


def norm_name(run_name):
    return re.sub(r"/(real_time|threads:\d+|min_time:[\d.]+|repeats:\d+|iterations:\d+)", "",
                  run_name)


def run_gbench(binary, out, tag, reps, min_time, filt=None, extra=()):
    cmd = [binary] + list(extra) + ["--benchmark_format=json",
                                    "--benchmark_repetitions=%d" % reps,
                                    "--benchmark_min_time=%s" % min_time]
    if reps > 1:
        cmd.append("--benchmark_report_aggregates_only=true")
    if filt:
        cmd.append("--benchmark_filter=" + filt)
    text = run(cmd)
    with open(os.path.join(out, tag + ".json"), "w") as f:
        f.write(text)
    data = json.loads(text)
    res = {}
    for b in data["benchmarks"]:
        if reps > 1 and b.get("aggregate_name") != "median":
            continue
        if reps == 1 and b.get("run_type") != "iteration":
            continue
        name = norm_name(b.get("run_name", b["name"]))
        if b.get("error_occurred"):
            res[name] = {"error": b.get("error_message", "error")}
            continue
        res[name] = {"ns": b["real_time"] * UNIT_NS[b.get("time_unit", "ns")],
                     "B": b.get("bytes_per_op"), "allocs": b.get("allocs_per_op")}
    return res, data.get("context", {})


def parse_scale(text):
    res = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            try:
                res[parts[0]] = float(parts[1])
            except ValueError:
                pass
    return res


# ---------------------------------------------------------------------------
# Formatting

def fmt_ns(v):
    if v is None:
        return "—"
    if v >= 1e6:
        return "{:,.0f}".format(v)
    if v >= 100:
        return "{:,.0f}".format(v)
    if v >= 10:
        return "%.1f" % v
    return "%.2f" % v


def fmt_mem(b, a):
    if b is None:
        return "—"
    bs = "%.0f" % b if b >= 10 or b == int(b) else "%.1f" % b
    as_ = "%.0f" % a if a == int(a) else "%.2f" % a
    return "%s (%s)" % (bs, as_)


def ratio(a, b):
    if a is None or b is None or b <= 0:
        return None
    return a / b


def fmt_ratio(r, target, mark=True):
    if r is None:
        return "—"
    s = ("%.1fx" % r) if r < 100 else ("%.0fx" % r)
    if mark and r < target:
        s += " ✗"
    return s


def lookup(res, key):
    if key is None or res is None:
        return None
    v = res.get(key)
    if v is None or "error" in v:
        return None
    return v


def machine():
    model, cpus = platform.processor() or "?", os.cpu_count()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "%s, %d CPUs, %s %s" % (model, cpus, platform.system(), platform.release())


def loadavg():
    try:
        return "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "?"


def compiler():
    for cc in ("c++", "g++", "clang++"):
        if shutil.which(cc):
            out = subprocess.run([cc, "--version"], stdout=subprocess.PIPE, text=True).stdout
            return out.splitlines()[0] if out else cc
    return "?"


def git_describe():
    try:
        return subprocess.run(["git", "-C", SRC_ROOT, "describe", "--always", "--dirty"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True).stdout.strip() or "?"
    except OSError:
        return "?"


def build_tables(go, lib, cxx_from, static, counts, scale_c, scale_go, meta):
    L = []
    L.append("# libctx vs Go context vs C++20 std::stop_source")
    L.append("")
    L.append("- date: %s" % meta["date"])
    L.append("- machine: %s" % meta["machine"])
    L.append("- %s; %s; libctx %s" % (meta["go"], meta["cxx"], meta["git"]))
    L.append("- %d rounds, each running Go (`go test -bench . -benchmem context`, -benchtime "
             "%s), then the C/C++ binary (Google Benchmark, real time, min time %s s); every "
             "figure is the median of its %d rounds, so Go and libctx see the same machine "
             "load; parallel benchmarks on %d threads (Go: GOMAXPROCS=%d)"
             % (meta["reps"], meta["go_benchtime"], meta["min_time"], meta["reps"],
                meta["cpus"], meta["cpus"]))
    L.append("- load average (1/5/15 min) before: %s; after: %s (a loaded machine makes "
             "figures noisy: compare ratios within one run)" % (meta["load_before"],
                                                                meta["load_after"]))
    L.append("- ns/op cells: median of the rounds (min–max of the rounds); (!) marks a "
             "figure whose rounds spread by more than 2x")
    L.append("- ratios > 1 mean libctx is faster; ✗ marks a ratio below the target "
             "(Go/libctx ≥ %gx, C++/libctx ≥ %gx)" % (GO_TARGET, CXX_TARGET))
    L.append("- memory columns: bytes per op (allocations per op); libctx: the bytes it "
             "requests through ctx_replace_allocator, counted in a separate run (a replaced "
             "allocator turns off libctx's node cache, so the timed runs use the default one); "
             "C++: operator new; Go: -benchmem")
    L.append("")
    hdr = ("| benchmark | Go ns/op | C++ ns/op | libctx ns/op | Go/libctx | C++/libctx "
           "| Go B/op (allocs) | C++ B/op (allocs) | libctx B/op (allocs) |")
    L.append(hdr)
    L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    chart = []
    def mem_of(name):
        v = lookup(counts, name) if counts else None
        return fmt_mem(v and v["B"], v and v["allocs"]) if v else "—"

    for gname, lname, cname, comparable in ROWS:
        g = lookup(go, gname)
        l = lookup(lib, "libctx/" + lname)
        c = lookup(cxx_from, "cxx/" + cname) if cname else None
        label = gname if lname == gname else "%s (libctx: a new thread)" % gname
        rg = ratio(g and g["ns"], l and l["ns"]) if comparable else None
        rc = ratio(c and c["ns"], l and l["ns"])
        L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            label, fmt_spread(g),
            fmt_spread(c) if cname else "n/a",
            fmt_spread(l),
            fmt_ratio(rg, GO_TARGET) if comparable else "not comparable",
            fmt_ratio(rc, CXX_TARGET) if cname else "n/a",
            fmt_mem(g and g["B"], g and g["allocs"]),
            fmt_mem(c and c["B"], c and c["allocs"]) if cname else "n/a",
            mem_of("libctx/" + lname)))
        if comparable:
            chart.append((gname, rg, rc))
    L.append("")
    L.append("Not in Go 1.19's benchmark_test.go (Go column from bench/go_extra where the "
             "shape exists in Go 1.19):")
    L.append("")
    L.append(hdr)
    L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for label, gname, lname, cname in EXTRA_ROWS:
        g = lookup(go, gname) if gname else None
        if lname.startswith("="):  # the same code for every column
            l = lookup(lib, lname[1:])
            lmem = "—"
        else:
            l = lookup(lib, "libctx/" + lname)
            lmem = mem_of("libctx/" + lname)
        c = lookup(cxx_from, "cxx/" + cname) if cname else None
        rg, rc = ratio(g and g["ns"], l and l["ns"]), ratio(c and c["ns"], l and l["ns"])
        L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            label, fmt_spread(g) if gname else "n/a",
            fmt_spread(c) if cname else "n/a", fmt_spread(l),
            fmt_ratio(rg, GO_TARGET, mark=not lname.startswith("=")) if gname else "n/a",
            fmt_ratio(rc, CXX_TARGET) if cname else "n/a",
            fmt_mem(g and g["B"], g and g["allocs"]) if gname else "n/a",
            fmt_mem(c and c["B"], c and c["allocs"]) if cname else "n/a", lmem))
    if static:
        L.append("")
        L.append("The cheap checks against the shared library (as shipped: a call through "
                 "the PLT) and the static one (a direct call), same run:")
        L.append("")
        L.append("| benchmark | libctx.so ns/op | libctx.a ns/op | BareAtomicLoad ns/op "
                 "| .so / bare | .a / bare |")
        L.append("|---|--:|--:|--:|--:|--:|")
        bare = lookup(lib, "BareAtomicLoad")
        bare_ns = bare and bare["ns"]
        for n in STATIC_ROWS:
            s = lookup(lib, "libctx/" + n)
            a = lookup(static, "libctx/" + n)
            rs, ra = ratio(s and s["ns"], bare_ns), ratio(a and a["ns"], bare_ns)
            L.append("| %s | %s | %s | %s | %s | %s |" % (
                n, fmt_ns(s and s["ns"]), fmt_ns(a and a["ns"]), fmt_ns(bare_ns),
                "—" if rs is None else "%.1fx" % rs, "—" if ra is None else "%.1fx" % ra))
    L.append("")
    L.append("## Scale")
    L.append("")
    L.append("| figure | libctx | Go | unit |")
    L.append("|---|--:|--:|---|")
    for label, ck, gk, unit in SCALE_ROWS:
        cv = scale_c.get(ck) if scale_c else None
        gv = scale_go.get(gk) if (scale_go and gk) else None
        if cv is None and gv is None:
            continue

        def f(v):
            if v is None:
                return "—"
            if v >= 1000:
                return "{:,.0f}".format(v)
            return ("%.1f" % v) if v != int(v) else "%d" % v
        L.append("| %s | %s | %s | %s |" % (label, f(cv), f(gv) if gk else "n/a", unit))
    if scale_c and "fire.born_done" in scale_c:
        L.append("")
        L.append("(%d of the 1M deadline contexts were already past when made: setup was "
                 "slower than the lead time.)" % scale_c["fire.born_done"])
    return "\n".join(L) + "\n", chart


def make_chart(chart, out):
    gp = shutil.which("gnuplot")
    if not gp and os.geteuid() == 0:
        log("gnuplot is missing: apt-get install -y gnuplot-nox")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        if subprocess.run(["apt-get", "install", "-y", "gnuplot-nox"], env=env).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env)
            subprocess.run(["apt-get", "install", "-y", "gnuplot-nox"], env=env)
        gp = shutil.which("gnuplot")
    if not gp:
        log("no gnuplot: no chart (apt-get install gnuplot-nox)")
        return None
    dat = os.path.join(out, "perf.dat")
    with open(dat, "w") as f:
        for name, rg, rc in chart:
            f.write('"%s" %s %s\n' % (name.replace("CancelTree/", "CT/").replace("Root=", "")
                                      .replace("DeepValueSameGoRoutine/", "DeepValue/")
                                      .replace("concurrency=", "c="),
                                      "%.4g" % rg if rg else "-", "%.4g" % rc if rc else "-"))
    png = os.path.join(out, "perf.png")
    n = len(chart)
    vals = [v for _, rg, rc in chart for v in (rg, rc) if v]
    ymin, ymax = 0.1, 1000.0
    while vals and ymin > min(vals) / 1.5 and ymin > 1e-3:
        ymin /= 10
    while vals and ymax < max(vals) * 3:
        ymax *= 10
    script = """
set terminal pngcairo size 1600,900 font "DejaVu Sans,11"
set output '%(png)s'
set termoption noenhanced
set title "How many times faster libctx is (log scale; > 1 = libctx faster)\\ndashed: the targets, Go/libctx >= 5x (blue) and C++/libctx >= 1x (red)" font ",14"
set datafile missing '-'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set logscale y
set yrange [%(ymin)s:%(ymax)s]
set ytics (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
set grid ytics
set xtics rotate by -50 left noenhanced
set xrange [-1:%(xmax)s]
set key top left
set bmargin 14
set label "CT = CancelTree, c = concurrency, DeepValue = DeepValueSameGoRoutine; missing red bar: no C++ counterpart" at screen 0.5, screen 0.02 center
set rmargin 10
set arrow from graph 0, first 5 to graph 1, first 5 nohead lw 2 dt 2 lc rgb "#1f77b4" front
set arrow from graph 0, first 1 to graph 1, first 1 nohead lw 2 dt 2 lc rgb "#d62728" front
plot '%(dat)s' using 2:xtic(1) title "Go / libctx" lc rgb "#1f77b4", \\
     '' using 3 title "C++ std::stop_source / libctx" lc rgb "#d62728"
""" % {"png": png, "dat": dat, "xmax": n, "ymin": ymin, "ymax": ymax}
    gpf = os.path.join(out, "perf.gp")
    with open(gpf, "w") as f:
        f.write(script)
    r = subprocess.run([gp, gpf], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        # pngcairo missing: fall back to libgd's png terminal.
        with open(gpf, "w") as f:
            f.write(script.replace('pngcairo size 1600,900 font "DejaVu Sans,11"',
                                   "png size 1600,900"))
        r = subprocess.run([gp, gpf], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        log("gnuplot failed: " + r.stderr.strip())
        return None
    return png


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", required=True)
    ap.add_argument("--bench-static")
    ap.add_argument("--scale")
    ap.add_argument("--go-scale")
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--min-time", default="0.2")
    ap.add_argument("--go-benchtime", default="200ms")
    ap.add_argument("--quick", action="store_true",
                    help="tiny run to check the plumbing (numbers meaningless)")
    ap.add_argument("--no-go", action="store_true", help="skip Go (no Go columns)")
    a = ap.parse_args()
    for attr in ("bench", "bench_static", "scale", "go_scale", "out"):
        if getattr(a, attr):
            setattr(a, attr, os.path.abspath(getattr(a, attr)))
    if a.quick:
        a.reps, a.min_time, a.go_benchtime = 1, "0.000001", "1x"
    os.makedirs(a.out, exist_ok=True)
    t_start = time.time()

    go_scale, gov = {}, "Go: not run"
    go = None if a.no_go else find_go()
    if go:
        gov = go_version(go, a.out)
    # Rounds: Go, then C/C++, then the static checks, a.reps times over, so
    # that a burst of load on this (shared) machine hits every column alike.
    load_before = loadavg()
    go_rounds, lib_rounds, static_rounds = [], [], []
    ctxinfo = {}
    for rnd in range(a.reps):
        log("round %d of %d" % (rnd + 1, a.reps))
        if go:
            go_rounds.append(run_go_bench(go, a.out, a.go_benchtime, rnd,
                                          os.path.join(HERE, "go_extra")))
        r, ctxinfo = run_gbench(a.bench, a.out, "ctx-bench.%d" % rnd, 1, a.min_time)
        lib_rounds.append(r)
        if a.bench_static:
            r, _ = run_gbench(a.bench_static, a.out, "ctx-bench-static.%d" % rnd, 1, a.min_time,
                              STATIC_FILTER)
            static_rounds.append(r)
    go_res = medians(go_rounds) if go_rounds else {}
    lib = medians(lib_rounds)
    static = medians(static_rounds) if static_rounds else None
    # libctx's allocations, counted through a replaced allocator.
    counts, _ = run_gbench(a.bench, a.out, "ctx-bench-counts", 1,
                           "0.000001" if a.quick else "0.01", extra=["--count-allocs"])
    scale_c = None
    if a.scale:
        text = run([a.scale] + (["--quick"] if a.quick else []))
        with open(os.path.join(a.out, "scale.txt"), "w") as f:
            f.write(text)
        scale_c = parse_scale(text)
    if go and a.go_scale:
        go_scale = run_go_scale(go, a.out, a.go_scale, a.quick)

    meta = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": machine(),
            "go": gov, "cxx": compiler(), "git": git_describe(),
            "go_benchtime": a.go_benchtime, "reps": a.reps, "min_time": a.min_time,
            "cpus": os.cpu_count(), "load_before": load_before, "load_after": loadavg()}
    if ctxinfo.get("library_build_type") == "debug":
        meta["cxx"] += " (the distribution's libbenchmark says it was built as debug; that " \
                       "affects its own bookkeeping, not the timed loops)"
    md, chart = build_tables(go_res, lib, lib, static, counts, scale_c, go_scale, meta)
    path = os.path.join(a.out, "report.md")
    with open(path, "w") as f:
        f.write(md)
    png = make_chart(chart, a.out)
    try:
        sys.stdout.reconfigure(errors="replace")
    except AttributeError:
        pass
    print(md)
    log("table: %s" % path)
    if png:
        log("chart: %s" % png)
    log("done in %.0f s" % (time.time() - t_start))


if __name__ == "__main__":
    main()
