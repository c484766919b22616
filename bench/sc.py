#!/usr/bin/env python3
# SPDX-License-Identifier: MIT

"""bench-sc: groups, merges and the cost of tracking, side by side.

Runs in rounds, in one invocation: bench/sc_tree.c against the baseline commit (CTX_BENCH_BASELINE, before cancel sites and tracking)
(--tree-base), against this tree with tracking off and with CTX_TRACK=1;
bench/sc.c (groups, merge); and the Go peer bench/sc_go (errgroup from
/usr/share/gocode, built once, no network).  Prints a Markdown table with
the min / median / max of the rounds and the ratios of the medians, and
writes it to <out>/bench/sc.md.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile


def run(cmd, env=None):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if r.returncode != 0:
        sys.exit("bench-sc: %s failed:\n%s%s" % (" ".join(cmd), r.stdout, r.stderr))
    out = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[0]] = float(parts[1])
    return out


def build_go(go_dir, out):
    tmp = tempfile.mkdtemp(prefix="sc-gopath-")
    env = dict(os.environ, GO111MODULE="off", GOPATH="/usr/share/gocode:" + tmp,
               GOCACHE=os.path.join(out, "go-cache"), GOPROXY="off", GOFLAGS="-mod=mod",
               GOTOOLCHAIN="local")
    exe = os.path.join(out, "sc_go")
    r = subprocess.run(["go", "build", "-o", exe, "."], cwd=go_dir, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        print("bench-sc: the Go peer did not build (golang-go, golang-golang-x-sync-dev?):\n"
              + r.stdout, file=sys.stderr)
        return None
    return exe


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", required=True)
    ap.add_argument("--tree-base")
    ap.add_argument("--sc", required=True)
    ap.add_argument("--go-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    go = build_go(a.go_dir, a.out)

    samples = {}

    def add(col, res):
        for k, v in res.items():
            samples.setdefault((k, col), []).append(v)

    env_off = dict(os.environ)
    env_off.pop("CTX_TRACK", None)
    env_on = dict(env_off, CTX_TRACK="1")
    for rnd in range(a.rounds):
        print("bench-sc: round %d/%d" % (rnd + 1, a.rounds), file=sys.stderr)
        if a.tree_base:
            add("main", run([a.tree_base], env_off))
        add("off", run([a.tree], env_off))
        add("on", run([a.tree], env_on))
        add("libctx", run([a.sc], env_off))
        if go:
            add("go", run([go], env_off))

    def cell(k, col):
        v = samples.get((k, col))
        if not v:
            return "-", None
        return "%.1f / %.1f / %.1f" % (min(v), statistics.median(v), max(v)), statistics.median(v)

    def ratio(x, y):
        return "%.2fx" % (x / y) if x is not None and y else "-"

    def ratio2(k, a_col, b_col):
        a_v, b_v = samples.get((k, a_col)), samples.get((k, b_col))
        if not a_v or not b_v:
            return "-"
        return "%.2fx / %.2fx" % (min(a_v) / min(b_v), statistics.median(a_v) / statistics.median(b_v))

    lines = []
    lines.append("### Tree operations: tracking off vs the baseline commit, and on (ns/op, min / median / max of %d rounds)" % a.rounds)
    lines.append("")
    lines.append("| operation | baseline | tracking off | CTX_TRACK=1 | Go 1.19 | off / baseline (min / median) | on / off (min / median) |")
    lines.append("|---|---|---|---|---|---|---|")
    names = {"tree_cancel": "WithCancel + cancel + free (child of a live parent)",
             "tree_cancel_nosite": "... cancelling with (ctx_cancel)(h): no site recorded",
             "tree_value": "WithValue + free"}
    for k in ("tree_cancel", "tree_cancel_nosite", "tree_value"):
        m, mv = cell(k, "main")
        f, fv = cell(k, "off")
        o, ov = cell(k, "on")
        g, _ = cell(k, "go")
        lines.append("| %s | %s | %s | %s | %s | %s | %s |" % (names[k], m, f, o, g, ratio2(k, "off", "main"),
                                                              ratio2(k, "on", "off")))
    lines.append("")
    lines.append("### Groups and merges (min / median / max of %d rounds)" % a.rounds)
    lines.append("")
    lines.append("| measurement | libctx | Go 1.19 (errgroup, context) | libctx / Go (min / median) |")
    lines.append("|---|---|---|---|")
    rows = [("group_cold_task_ns", "10,000 trivial tasks, limit 8, the process's first batch: ns per task"),
            ("group_task_ns", "10,000 trivial tasks, limit 8, pool warm (best of 3 batches): ns per task"),
            ("group_on_caller_pct", "... share run by the submitting thread while at the limit (%)"),
            ("block_p50_us", "1,000 blocked tasks, no limit: failing return to task return, p50 (µs)"),
            ("block_p99_us", "... p99 (µs)"),
            ("block_max_us", "... last task (µs)"),
            ("floor_p50_us", "floor: 1,000 threads on a bare futex word, FUTEX_WAKE to return, p50 (µs)"),
            ("floor_p99_us", "... p99 (µs)"),
            ("floor_max_us", "... last thread (µs)"),
            ("merge_ns", "merge of 2 parents, create + free (Go: WithCancel + a watcher goroutine) (ns)"),
            ("with_cancel_ns", "plain WithCancel, create + free (ns)")]
    for k, label in rows:
        c, cv = cell(k, "libctx")
        g, gv = cell(k, "go")
        lines.append("| %s | %s | %s | %s |" % (label, c, g, ratio2(k, "libctx", "go")))
    mv = statistics.median(samples[("merge_ns", "libctx")])
    cv = statistics.median(samples[("with_cancel_ns", "libctx")])
    lines.append("")
    lines.append("ctx_merge of 2 parents costs %.2fx a plain ctx_with_cancel (medians)." % (mv / cv))
    text = "\n".join(lines) + "\n"
    print(text)
    bench_dir = os.path.join(a.out, "bench") if not a.out.rstrip("/").endswith("bench") else a.out
    os.makedirs(bench_dir, exist_ok=True)
    with open(os.path.join(bench_dir, "sc.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
