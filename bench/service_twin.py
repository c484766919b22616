#!/usr/bin/env python3
# SPDX-License-Identifier: MIT

"""reportd beside its Go twin (bench/service_twin/twin.go), measured from
outside on loopback, alternating rounds so that a busy machine hurts both
alike.

    bench/service_twin.py --reportd build/examples/reportd/reportd --out build/bench
                          [--seconds 5] [--rounds 3] [--quick] [--no-plot]
                          [--before OTHER_REPORTD] [--also NAME=REPORTD]
                          [--skip closed,wide,curve,slow] [--saturating RATE]
                          [--factors 1,1.25,1.5,2] [--curve-rounds N]
                          [--loads 'no work;compute_ms=1&db_ms=1'] [--conns 50,500]
                          [--closed-also]

1. Closed loop, wrk -t2, 50 connections and then 500, on three loads:
   /report with no work; /report?compute_ms=1&db_ms=1; two services (a
   front calling a downstream) with /report?upstream_ms=1.  Per round and
   side: requests/s, goodput (2xx answers/s), p99, non-2xx answers, CPU
   per request (user+system of the service processes, from /proc).  The ratios are taken round by round.
   With --before, a second reportd (another build, e.g. the previous
   commit) runs in the same rounds, and a second table gives reportd's
   figures against it: a paired A/B of two versions on the same load;
   --closed-also adds the --also builds the same way, and --skip twin
   leaves the twin out.
2. The curve: an open-loop generator (bench/service_twin/load) offers
   compute_ms=1&db_ms=1 at rates from a quarter to twice the saturating
   rate found in 1; per rate and side: goodput, p99 of the successful
   requests, the 504 share, how long the latest answer came after the
   budget, and the most threads the service had.  The --before build and
   each --also build run beside reportd and the twin, each point's sides
   in a rotating order; --curve-rounds repeats the points.  Plotted to OUT/service_twin_curve.png (Debian python3-matplotlib,
   run by /usr/bin/python3).
3. Slow clients: 10,000 connections sending headers at 1 byte/s while
   normal clients send 5 requests/s; their p99 against the same without
   the slow ones, and the memory per idle connection (RSS growth / n).

Prints Markdown and writes OUT/service_twin.md, with the machine and its
load average: the figures are what one run measured on it.
"""
import argparse
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TICK = os.sysconf("SC_CLK_TCK")
BUDGET_MS = 500
LOADS = [("no work", "/report", False),
         ("compute_ms=1&db_ms=1", "/report?compute_ms=1&db_ms=1", False),
         ("two services, upstream_ms=1", "/report?upstream_ms=1", True)]
RUNNING = []


class Proc:
    """One service process; its log goes to a file."""

    def __init__(self, argv, tmp, name):
        self.log = open(os.path.join(tmp, name + ".log"), "w")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log, text=True)
        RUNNING.append(self)
        line = self.proc.stdout.readline()
        m = re.search(r"listening on \S+:(\d+)", line)
        if not m:
            raise SystemExit("%s did not start: %r" % (argv[0], line))
        self.url = "http://127.0.0.1:" + m.group(1)

    def cpu(self):
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def rss_kb(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def go_build(src, out, tmp):
    env = dict(os.environ, GO111MODULE="off", GOFLAGS="-mod=mod", GOPROXY="off",
               GOPATH="/usr/share/gocode:" + os.path.join(tmp, "gopath"),
               GOCACHE=os.path.join(tmp, "gocache"))
    subprocess.run(["go", "build", "-o", out, "."], cwd=src, env=env, check=True)


def side(kind, binary, tmp, upstream):
    """A front service (and its downstream when upstream is set)."""
    procs = []
    extra = []
    if upstream:
        down = Proc(binary(), tmp, kind + "-down")
        procs.append(down)
        extra = ["-upstream" if kind == "twin" else "--upstream", down.url]
    front = Proc(binary() + extra, tmp, kind + "-front")
    return front, [front] + procs


def wrk(url, conns, seconds):
    out = subprocess.run(["wrk", "-t2", "-c%d" % conns, "-d%ds" % seconds, "--latency",
                          "--timeout", "5s", url], capture_output=True, text=True).stdout

    def ms(text):
        m = re.match(r"([\d.]+)(us|ms|s|m)", text)
        if not m:
            return float("nan")
        v, unit = m.groups()
        return float(v) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    p99 = ms(re.search(r"99%\s+(\S+)", out).group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    bad = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errs = sum(int(x) for x in m.groups()) if m else 0
    # Goodput: the 2xx answers per second.  Under a closed loop a quick
    # rejection is followed at once by the next request, so requests/s alone
    # can grow while less work is done.
    good = rps * max(total - bad - errs, 0) / max(total, 1)
    return {"rps": rps, "total": total, "p99": p99, "bad": bad, "errs": errs, "good": good}


def measure(front, procs, path, conns, seconds):
    cpu0 = sum(p.cpu() for p in procs)
    r = wrk(front.url + path, conns, seconds)
    r["cpu_us"] = (sum(p.cpu() for p in procs) - cpu0) / max(r["total"], 1) * 1e6
    return r


def med_known(v):
    """The median of the figures wrk printed: a round whose latency line it
    did not print as a number (nan) is left out rather than spoiling the
    median."""
    known = [x for x in v if x == x]
    return statistics.median(known) if known else float("nan")


def spread(v):
    return "%.2f (%.2f-%.2f)" % (statistics.median(v), min(v), max(v))


def ab_row(name, a, b):
    """One row comparing side a with side b, round by round."""
    med = statistics.median
    return "| %s | %.0f | %.0f | %s | %.0f / %.0f | %.1f / %.1f | %d / %d | %.0f / %.0f | %s |" % (
        name, med(x["rps"] for x in a), med(y["rps"] for y in b),
        spread([x["rps"] / y["rps"] for x, y in zip(a, b)]),
        med(x["good"] for x in a), med(y["good"] for y in b),
        med_known([x["p99"] for x in a]), med_known([y["p99"] for y in b]),
        sum(x["bad"] + x["errs"] for x in a), sum(y["bad"] + y["errs"] for y in b),
        med(x["cpu_us"] for x in a), med(y["cpu_us"] for y in b),
        spread([x["cpu_us"] / y["cpu_us"] for x, y in zip(a, b)]))


def ab_header(other):
    return ["| load | reportd req/s | %s req/s | ratio (median, range) | goodput (2xx/s) "
            "reportd / %s | p99 reportd / %s ms | non-2xx reportd / %s | CPU per request "
            "reportd / %s us | CPU ratio |" % ((other,) * 5),
            "|---|---|---|---|---|---|---|---|---|"]


def closed_loop(args, tmp, sides, conns, md):
    """reportd against every other side in the same rounds, one table each."""
    md.append("\n### Closed loop, wrk -t2, %d connections, %d s rounds\n" % (conns, args.seconds))
    others = [k for k in sides if k != "reportd"]
    sat = {}
    rows = {k: [] for k in others}
    for name, path, two in [l for l in LOADS if l[0] in args.loads]:
        rs = {k: [] for k in sides}
        services = {k: side(k, b, tmp, two) for k, b in sides.items()}
        for rnd in range(args.rounds):
            # Each side goes first in turn.
            order = list(sides)[rnd % len(sides):] + list(sides)[:rnd % len(sides)]
            for k in order:
                rs[k].append(measure(services[k][0], services[k][1], path, conns, args.seconds))
        for k in services:
            for p in services[k][1]:
                p.stop()
        sat[name] = max(statistics.median(x["rps"] for x in rs[k]) for k in sides)
        for k in others:
            rows[k].append(ab_row(name, rs["reportd"], rs[k]))
            print("%s: %s" % (k, rows[k][-1]), flush=True)
    for k in others:
        md.append("\nreportd against %s%s:\n" % (
            k, " (%s)" % args.before if k == "before" else ""))
        md.extend(ab_header(k))
        md.extend(rows[k])
    return sat


def peak_threads(proc, stop, out):
    """The most threads proc had, sampled every 50 ms until stop is set."""
    while not stop.is_set():
        try:
            with open("/proc/%d/status" % proc.proc.pid) as f:
                for line in f:
                    if line.startswith("Threads:"):
                        out[0] = max(out[0], int(line.split()[1]))
        except OSError:
            return
        stop.wait(0.05)


def quiet(services, limit=20.0):
    """Waits until the services use under 5% of a CPU over 0.5 s, for at
    most limit seconds: past saturation a side keeps working on what it has
    queued after the client has gone (the twin for seconds), and the next
    side measured would pay for it.  Returns the seconds waited."""
    t0 = time.time()
    procs = [p for k in services for p in services[k][1]]
    while time.time() - t0 < limit:
        c0 = sum(p.cpu() for p in procs)
        time.sleep(0.5)
        if sum(p.cpu() for p in procs) - c0 < 0.025:
            break
    return time.time() - t0


def open_loop(args, tmp, sides, load, saturating, md):
    path = LOADS[1][1]
    md.append("\n### Open loop on %s: offered load against goodput, p99 and 504s (%d s per "
              "point, %d round(s), the sides alternating)\n" % (LOADS[1][0], args.seconds,
                                                              args.curve_rounds))
    md.append("| offered/s | side | goodput/s | p99 of 200s ms | 504 share | other | latest "
              "answer past the budget ms | peak threads |")
    md.append("|---|---|---|---|---|---|---|---|")
    curve = {k: [] for k in sides}
    services = {k: side(k, b, tmp, False) for k, b in sides.items()}
    factors = [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0] if not args.quick else [0.5, 1.0, 2.0]
    if args.factors:
        factors = [float(x) for x in args.factors.split(",")]
    names = list(sides)
    i = 0
    for rnd in range(args.curve_rounds):
        for f in factors:
            rate = max(10, saturating * f)
            order = names[i % len(names):] + names[:i % len(names)]
            i += 1
            for k in order:
                quiet(services)
                stop, peak = threading.Event(), [0]
                sampler = threading.Thread(target=peak_threads,
                                           args=(services[k][0], stop, peak))
                sampler.start()
                out = subprocess.run([load, "-mode", "open", "-url", services[k][0].url + path,
                                      "-rate", "%.0f" % rate, "-d", "%ds" % args.seconds,
                                      "-budget", str(BUDGET_MS)], capture_output=True,
                                     text=True).stdout
                stop.set()
                sampler.join()
                kv = dict(x.split("=") for x in out.split())
                curve[k].append((rate, float(kv["goodput"]), float(kv["p99_ok_ms"]),
                                 float(kv["deadline_share"])))
                md.append("| %.0f | %s | %s | %s | %.1f%% | %s | %s | %d |" % (
                    rate, k, kv["goodput"], kv["p99_ok_ms"], 100 * float(kv["deadline_share"]),
                    int(kv["other"]) + int(kv["failed"]), kv["late_ms"], peak[0]))
                print(md[-1], flush=True)
    for k in services:
        for p in services[k][1]:
            p.stop()
    return curve


def plot(curve, out):
    script = """
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
curve = json.loads(sys.argv[1])
fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
for k, style in (("reportd", "o-"), ("twin", "s--"), ("before", "^:")):
    if k not in curve:
        continue
    pts = sorted(curve[k])
    x = [p[0] for p in pts]
    ax[0].plot(x, [p[1] for p in pts], style, label=k)
    ax[1].plot(x, [p[2] for p in pts], style, label=k)
    ax[2].plot(x, [100 * p[3] for p in pts], style, label=k)
for a, t in zip(ax, ("goodput (200/s)", "p99 of 200s (ms)", "504 share (%)")):
    a.set_xlabel("offered load (requests/s)")
    a.set_title(t)
    a.grid(True, alpha=0.3)
    a.legend()
fig.suptitle("/report?compute_ms=1&db_ms=1, budget 500 ms: reportd and its Go twin")
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=90)
"""
    import json
    r = subprocess.run(["/usr/bin/python3", "-c", script, json.dumps(curve), out],
                       capture_output=True, text=True)
    return r.returncode == 0, r.stderr.strip().splitlines()[-1:] if r.returncode else []


def slow_clients(args, tmp, reportd, load, md):
    n = 1000 if args.quick else 10000
    md.append("\n### Slow clients: %d connections at 1 byte/s, normal clients at 5 req/s on fresh "
              "connections (%d s)\n" % (n, max(args.seconds, 20)))
    # A read deadline longer than the run keeps every slow connection open,
    # for the memory figure and the worst case for the others.
    front = Proc([reportd, "--listen", "127.0.0.1:0", "--read-ms", "600000"], tmp, "slow")
    d = "%ds" % max(args.seconds, 20)
    url = front.url + "/report?compute_ms=1&db_ms=1"
    secs = max(args.seconds, 20)
    normal = [load, "-mode", "trickle", "-n", "0", "-url", url, "-rate", "5", "-d", d]
    quiet = subprocess.run(normal, capture_output=True, text=True).stdout
    rss0 = front.rss_kb()
    # The slow connections come from one process and the normal clients
    # from another: 10,000 goroutines in the measuring process would delay
    # its own requests and clock.
    proc = subprocess.Popen([load, "-mode", "trickle", "-n", str(n), "-url", url, "-rate", "0",
                             "-d", "%ds" % (secs + 30)], stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 15
    while time.time() < deadline:
        time.sleep(0.5)
        if front.rss_kb() > rss0 and len(os.listdir("/proc/%d/fd" % front.proc.pid)) >= n:
            break
    busy = subprocess.run(normal, capture_output=True, text=True).stdout
    rss1 = front.rss_kb()
    with open("/proc/%d/status" % front.proc.pid) as f:
        threads = [l.split()[1] for l in f if l.startswith("Threads:")][0]
    trickled = dict(x.split("=") for x in proc.communicate()[0].split())
    front.stop()
    q = dict(x.split("=") for x in quiet.split())
    b = dict(x.split("=") for x in busy.split())
    md.append("| | p50 ms | p99 ms | max ms | normal failures |")
    md.append("|---|---|---|---|---|")
    md.append("| quiet | %s | %s | %s | %s |" % (q["p50_ms"], q["p99_ms"], q["max_ms"],
                                                 int(q["normal_other"]) + int(q["normal_failed"])))
    md.append("| %s slow connections open | %s | %s | %s | %s |" % (
        trickled["opened"], b["p50_ms"], b["p99_ms"], b["max_ms"],
        int(b["normal_other"]) + int(b["normal_failed"])))
    per = (rss1 - rss0) * 1024 / max(int(trickled["opened"]), 1)
    md.append("\nRSS %d KiB idle, %d KiB with the slow connections open: %.1f KiB per "
              "connection; %s threads." % (rss0, rss1, per / 1024, threads))
    print("\n".join(md[-6:]), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reportd", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="fewer points and connections")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--before", help="another reportd build to compare in the same rounds")
    ap.add_argument("--also", action="append", default=[], metavar="NAME=REPORTD",
                    help="a further reportd build in the curve's rounds, under NAME")
    ap.add_argument("--factors", help="the curve's points, comma-separated multiples of the "
                    "saturating rate (default 0.25,0.5,0.75,1,1.25,1.5,2)")
    ap.add_argument("--curve-rounds", type=int, default=1,
                    help="how many times the curve's points are run, the sides alternating")
    ap.add_argument("--skip", default="",
                    help="comma-separated: closed,wide,curve,slow; twin: the curve without it")
    ap.add_argument("--loads", default="all",
                    help="the closed loop's loads by name, separated by ';' (default: all)")
    ap.add_argument("--conns", default="50,500",
                    help="the closed loop's connection counts (the first is --skip closed, "
                    "the second --skip wide)")
    ap.add_argument("--closed-also", action="store_true",
                    help="run the --also builds in the closed loop too")
    ap.add_argument("--saturating", type=float, default=0,
                    help="the saturating rate for the curve when the closed loop is skipped")
    args = ap.parse_args()
    args.loads = [l[0] for l in LOADS] if args.loads == "all" else \
        [l.strip() for l in args.loads.split(";")]
    for l in args.loads:
        if l not in [x[0] for x in LOADS]:
            ap.error("--loads: no load named %r" % l)
    narrow, wide = (int(c) for c in args.conns.split(","))
    os.makedirs(args.out, exist_ok=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    skip = set(args.skip.split(","))
    tmp = tempfile.mkdtemp(prefix="service-twin-")
    twin = os.path.join(tmp, "twin")
    load = os.path.join(tmp, "load")
    go_build(os.path.join(HERE, "service_twin"), twin, args.out)
    go_build(os.path.join(HERE, "service_twin", "load"), load, args.out)
    sides = {"reportd": lambda: [args.reportd, "--listen", "127.0.0.1:0",
                                 "--budget-ms", str(BUDGET_MS)],
             "twin": lambda: [twin, "-listen", "127.0.0.1:0", "-budget-ms", str(BUDGET_MS)]}
    if args.before:
        sides["before"] = lambda: [args.before, "--listen", "127.0.0.1:0",
                                   "--budget-ms", str(BUDGET_MS)]
    # The closed loop compares reportd with the twin, --before and, with
    # --closed-also, the --also builds; "twin" in --skip leaves the twin out.
    for a in args.also:
        name, binary = a.split("=", 1)
        sides[name] = (lambda b: lambda: [b, "--listen", "127.0.0.1:0", "--budget-ms",
                                          str(BUDGET_MS)])(binary)
    closed = {k: v for k, v in sides.items()
              if k not in skip and (args.closed_also or k in ("reportd", "twin", "before"))}
    with open("/proc/cpuinfo") as f:
        model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
    md = ["## reportd beside its Go twin",
          "\n%s, %d cores, %s; load average before: %s; file limit %d." % (
              model, os.cpu_count(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              " ".join(open("/proc/loadavg").read().split()[:3]), hard)]
    print("\n".join(md), flush=True)
    try:
        sat = {}
        if "closed" not in skip:
            sat = closed_loop(args, tmp, closed, narrow, md)
        if "wide" not in skip:
            closed_loop(args, tmp, closed, wide, md)
        if "curve" not in skip:
            s = sat.get(LOADS[1][0]) or args.saturating or 900
            curve = open_loop(args, tmp, {k: v for k, v in sides.items() if k not in skip},
                              load, s, md)
            png = os.path.join(args.out, "service_twin_curve.png")
            if not args.no_plot:
                ok, err = plot(curve, png)
                md.append("\n" + ("Plot: %s" % png if ok else "No plot (%s)." % " ".join(err)))
        if "slow" not in skip:
            slow_clients(args, tmp, args.reportd, load, md)
    finally:
        for p in RUNNING:
            p.stop()
    md.append("\nLoad average after: %s." % " ".join(open("/proc/loadavg").read().split()[:3]))
    text = "\n".join(md) + "\n"
    with open(os.path.join(args.out, "service_twin.md"), "w") as f:
        f.write(text)
    print(md[-1])


if __name__ == "__main__":
    main()
