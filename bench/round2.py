#!/usr/bin/env python3
# SPDX-License-Identifier: MIT

"""The second performance round: libctx beside Go, in rounds.

Each round runs every figure once for libctx (bench/round2.c, a fresh
process per figure, so first touch is paid as a user pays it) and once for
Go (bench/round2_go, built once with the Go toolchain, no network), one
after the other, so that both meet the same machine.  The table gives the
minimum, median and maximum over the rounds, the ratio of the medians, and
flags a figure whose rounds spread by more than 2x (max > 2 min): on a
loaded machine such a figure says more about the load than about the code.

The machine is recorded at the top: CPU model, cores, kernel, the commit,
and the load average before and after.  The table goes to stdout and to
<out>/round2.md.  Only the Python standard library is used.

  round2.py --bin BUILD/bench/ctx_round2 --go bench/round2_go --out BUILD/bench
            [--rounds 5] [--quick] [--only fanout|storm|timeouts] [--rt]
"""

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC_ROOT = os.path.dirname(HERE)


def machine():
    """A dict describing the machine and the tree, for the report's head."""
    info = {"cpu": platform.processor() or "?", "cores": os.cpu_count() or 0,
            "kernel": platform.release(), "commit": "?"}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        out = subprocess.run(["git", "-C", SRC_ROOT, "describe", "--always", "--dirty"],
                             capture_output=True, text=True, check=True)
        info["commit"] = out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def loadavg():
    try:
        return "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "?"


def parse(text):
    vals = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            vals[parts[0]] = (float(parts[1]), parts[2])
    return vals


RT_PREFIX = []


def run(cmd, env=None):
    out = subprocess.run(RT_PREFIX + cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.stderr.write("round2: %s failed (%d):\n%s" % (" ".join(cmd), out.returncode,
                                                          out.stderr))
        return {}
    return parse(out.stdout)


def go_build(go_dir, out_dir):
    """Builds the Go peer into out_dir with no network; returns its path or None."""
    exe = os.path.join(out_dir, "round2_go")
    gopath = os.path.join(out_dir, "gopath")
    os.makedirs(gopath, exist_ok=True)
    env = dict(os.environ, GOFLAGS="-mod=mod", GO111MODULE="off",
               GOPATH="/usr/share/gocode:" + gopath,
               GOCACHE=os.path.join(out_dir, "gocache"), GOPROXY="off")
    try:
        subprocess.run(["go", "build", "-o", exe, "round2.go"], cwd=go_dir, env=env,
                       check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        sys.stderr.write("round2: no Go peer (%s)\n" % e)
        return None
    return exe


# (row label, figure key, libctx command, Go command or None)
def figures(quick, only):
    q = ["--quick"] if quick else []
    gq = ["-quick"] if quick else []
    rows = []
    if only in (None, "fanout"):
        for t in (1, 2):
            rows.append(("Shared-parent fan-out, %d thread%s (ns/op)" % (t, "s" if t > 1 else ""),
                         "fanout.ns_per_op", q + ["fanout", str(t)], gq + ["fanout", str(t)]))
        for t in (1, 2):
            rows.append(("Shared-parent fan-out, %d thread%s: CPU time (ns/op)"
                         % (t, "s" if t > 1 else ""), "fanout.cpu_ns_per_op",
                         q + ["fanout", str(t)], gq + ["fanout", str(t)]))
        # The same loop with 1 and 2 threads taking turns in one process
        # (bench/round2.c fanmix): libctx only, no Go peer.
        for key, label in (("one", "1 thread"), ("shared", "2 threads, one parent"),
                           ("private", "2 threads, a parent each (nothing shared)")):
            rows.append(("Fan-out in turns, %s (ns/op)" % label,
                         "fanmix.%s.ns_per_op" % key, q + ["fanmix"], None))
            rows.append(("Fan-out in turns, %s: CPU time (ns/op)" % label,
                         "fanmix.%s.cpu_ns_per_op" % key, q + ["fanmix"], None))
    if only in (None, "storm"):
        for key, label in (("storm.p50", "p50"), ("storm.p99", "p99"), ("storm.max", "max")):
            rows.append(("Storm with callbacks, lateness %s (us) [Go: time.AfterFunc]" % label,
                         key, q + ["storm", "after"], gq + ["storm", "afterfunc"]))
        for key, label in (("storm.p50", "p50"), ("storm.p99", "p99"), ("storm.max", "max")):
            rows.append(("Storm without callbacks, lateness %s (us) [Go: goroutine per ctx]"
                         % label, key, q + ["storm", "state"], gq + ["storm", "goroutine"]))
    if only in (None, "timeouts"):
        rows.append(("1M live timeouts: create (ns/op)", "timeouts.create", q + ["timeouts"],
                     gq + ["timeouts"]))
        rows.append(("1M live timeouts: memory per timeout (B) [libctx RSS, Go heap]",
                     "timeouts.rss_per_timer|timeouts.heap_per_timer", q + ["timeouts"],
                     gq + ["timeouts"]))
        rows.append(("1M live timeouts: cancel each (ns/op)", "timeouts.cancel_each",
                     q + ["timeouts"], gq + ["timeouts"]))
        rows.append(("1M live timeouts: cancel each in a fixed random order (ns/op)",
                     "timeouts.cancel_random", q + ["timeouts_random"], gq + ["timeouts_random"]))
    return rows


def spread(vals):
    if not vals:
        return None
    return (min(vals), statistics.median(vals), max(vals))


def fmt(v):
    if v is None:
        return "n/a"
    if v >= 100:
        return "%.0f" % v
    if v >= 10:
        return "%.1f" % v
    return "%.2f" % v


def cell(s):
    if s is None:
        return "n/a"
    lo, med, hi = s
    flag = " (!)" if lo > 0 and hi > 2 * lo else ""
    return "%s / %s / %s%s" % (fmt(lo), fmt(med), fmt(hi), flag)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--go", required=True, help="directory of round2.go")
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", choices=["fanout", "storm", "timeouts"])
    ap.add_argument("--rt", action="store_true",
                    help="run every figure under chrt -f 10 (root only), so that a loaded "
                         "machine still runs a figure's threads at the same time")
    a = ap.parse_args()
    if a.rt:
        RT_PREFIX[:] = ["chrt", "-f", "10"]
    os.makedirs(a.out, exist_ok=True)

    m = machine()
    load_before = loadavg()
    go = go_build(a.go, a.out)
    rows = figures(a.quick, a.only)
    # One process per distinct command per round; its keys feed every row
    # that names them.
    c_res = {}
    g_res = {}
    for r in range(a.rounds):
        seen = set()
        for label, key, ccmd, gcmd in rows:
            ck = tuple(ccmd)
            if ck not in seen:
                seen.add(ck)
                c_res.setdefault(ck, []).append(run([a.bin] + ccmd))
            gk = ("go",) + tuple(gcmd) if gcmd is not None else None
            if go is not None and gk is not None and gk not in seen:
                seen.add(gk)
                g_res.setdefault(gk, []).append(run([go] + gcmd))
        sys.stderr.write("round2: round %d of %d done\n" % (r + 1, a.rounds))
    load_after = loadavg()

    def values(results, key):
        out = []
        for res in results:
            for k in key.split("|"):
                if k in res:
                    out.append(res[k][0])
        return out

    lines = []
    lines.append("# libctx beside Go: second performance round")
    lines.append("")
    lines.append("- Date: %s" % datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC"))
    lines.append("- Commit: %s" % m["commit"])
    lines.append("- CPU: %s, %d cores; kernel %s" % (m["cpu"], m["cores"], m["kernel"]))
    lines.append("- Load average (1/5/15 min) before: %s; after: %s" % (load_before, load_after))
    lines.append("- %d rounds; each cell is min / median / max over the rounds; (!) marks a "
                 "figure whose rounds spread by more than 2x" % a.rounds)
    if a.rt:
        lines.append("- every figure ran at real-time priority (chrt -f 10)")
    lines.append("")
    lines.append("| Figure | libctx | Go 1.19 | Go / libctx (medians) |")
    lines.append("|---|---|---|---|")
    medians = {}
    for label, key, ccmd, gcmd in rows:
        cs = spread(values(c_res.get(tuple(ccmd), []), key))
        gs = (spread(values(g_res.get(("go",) + tuple(gcmd), []), key))
              if go and gcmd is not None else None)
        ratio = "n/a"
        if cs and gs and cs[1] > 0:
            ratio = "%.2fx" % (gs[1] / cs[1])
        medians[label] = (cs[1] if cs else None, gs[1] if gs else None)
        lines.append("| %s | %s | %s | %s |" % (label, cell(cs), cell(gs), ratio))
    f1 = medians.get("Shared-parent fan-out, 1 thread (ns/op)")
    f2 = medians.get("Shared-parent fan-out, 2 threads (ns/op)")
    if f1 and f2 and f1[0] and f2[0]:
        lines.append("")
        lines.append("Fan-out scaling from separate processes, libctx: 2 threads give %.2fx "
                     "the throughput of 1 "
                     "(medians)%s." % (f1[0] / f2[0], "" if not (f1[1] and f2[1]) else
                                       "; Go: %.2fx" % (f1[1] / f2[1])))
    mix = c_res.get(tuple((["--quick"] if a.quick else []) + ["fanmix"]), [])
    scale = spread(values(mix, "fanmix.scale"))
    ceiling = spread(values(mix, "fanmix.ceiling"))
    share = spread(values(mix, "fanmix.shared_of_ceiling"))
    if scale and ceiling and share:
        lines.append("")
        lines.append("Fan-out scaling in turns (one process; 1 thread, 2 threads on one parent and "
                     "2 threads with a parent each alternate in turns of %s; each figure the "
                     "median of the ratios within a set of turns, min / median / max over the "
                     "rounds): 2 threads on one parent give %s the throughput of 1; 2 threads "
                     "with nothing shared give %s (what the machine gives this loop); one parent "
                     "reaches %s of that." % ("20 ms" if a.quick else "150 ms", cell(scale), cell(ceiling),
                                                cell(share)))
        lines.append("")
        lines.append("The separate-process line above compares a 1-thread process and a "
                     "2-thread process run seconds apart; a CPU's speed at this loop changes "
                     "between such runs on a virtual machine, so that line can say 1.0x or "
                     "1.9x of the same build.  The turns compare the three shapes on the same "
                     "machine state.")
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    with open(os.path.join(a.out, "round2.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
