#!/usr/bin/env python3
# SPDX-License-Identifier: MIT

"""The load and fault run of reportd: `make bench` runs it as
bench-service; alone:

    bench/service.py --reportd build/examples/reportd/reportd --out build/bench
                     [--seconds 10] [--rounds 3] [--full]

Three phases, each against a front reportd and its downstream on loopback
(SQLite, budget 500 ms), with the load generators from Debian (wrk) and a Go
program (bench/service_go/load.go) for what wrk cannot do (hang up at a
random moment):

1. throughput: wrk, 200 connections on
   /report?compute_ms=5&db_ms=5&upstream_ms=5, for libctx and for the same
   service with contexts switched off (--no-ctx: parts not cancellable),
   alternating, in rounds: requests/s, p50/p99 latency, CPU per request;
2. faults: one client in three hangs up at a random moment and the upstream
   hangs for 10% of the requests; then the gauges, live contexts, fds and
   RSS are compared with their idle values, and every log line is checked
   for a request that outlived its budget by more than 50 ms;
3. avalanche: the upstream hangs for everyone under 200 connections; /metrics
   is probed every 100 ms and the in-flight gauges sampled.

--seconds is each phase's length (default 10; --full: 30).
Prints Markdown and writes it to OUT/service.md.  The machine this runs on
may be shared: the figures are what one run measured, nothing more.
"""
import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
BUDGET_MS = 500
TICK = os.sysconf("SC_CLK_TCK")
# Idle figures are read this long after the load: libctx's task pool lets
# an idle thread go after 2 s, and with it its stack and its libcurl
# connection cache.
IDLE_WAIT = 3


RUNNING = []


class Service:
    """One reportd process; its stderr (the log) is collected in a file."""

    def __init__(self, reportd, tmp, name, extra):
        RUNNING.append(self)
        self.log_path = os.path.join(tmp, name + ".log")
        self.log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(
            [reportd, "--listen", "127.0.0.1:0", "--budget-ms", str(BUDGET_MS)] + extra,
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        m = re.match(r"listening on 127\.0\.0\.1:(\d+)", line)
        if not m:
            raise SystemExit("reportd did not start: %r" % line)
        self.url = "http://127.0.0.1:%s" % m.group(1)

    def cpu_s(self):
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def fds(self):
        return len(os.listdir("/proc/%d/fd" % self.proc.pid))

    def rss_kb(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def metrics(self):
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = int(v)
        return out

    def in_flight(self):
        m = self.metrics()
        return sum(v for k, v in m.items() if "_in_flight" in k)

    def log_ms(self):
        """The ms= of every finished request in the log."""
        with open(self.log_path) as f:
            return [int(m.group(1)) for m in re.finditer(r" ms=(\d+) ", f.read())]

    def stop(self):
        RUNNING.remove(self)
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            self.log.close()


def pair(args, tmp, tag, extra=()):
    down = Service(args.reportd, tmp, tag + "-down", list(extra))
    front = Service(args.reportd, tmp, tag + "-front",
                    ["--upstream", down.url] + list(extra))
    return front, down


def wrk(url, seconds, conns):
    out = subprocess.run(
        ["wrk", "-t2", "-c%d" % conns, "-d%ds" % seconds, "--latency", "--timeout", "10s", url],
        capture_output=True, text=True, check=True).stdout

    def ms(text):
        v, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
        return float(v) * {"us": 0.001, "ms": 1, "s": 1000}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    p50 = ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, total, p50, p99, int(bad.group(1)) if bad else 0


def spread(values):
    return "%s / %s / %s" % tuple(fmt(v) for v in (min(values), statistics.median(values),
                                                   max(values)))


def fmt(v):
    return "%.0f" % v if abs(v) >= 100 else "%.2f" % v


def phase_throughput(args, tmp, out):
    url_path = "/report?compute_ms=5&db_ms=5&upstream_ms=5"
    res = {"libctx": [], "no ctx": []}
    for r in range(args.rounds):
        for mode, extra in (("libctx", []), ("no ctx", ["--no-ctx"])):
            front, down = pair(args, tmp, "tp%d%s" % (r, "n" if extra else "c"), extra)
            wrk(front.url + url_path, 1, args.conns)  # warm up
            cpu0 = front.cpu_s() + down.cpu_s()
            rps, total, p50, p99, bad = wrk(front.url + url_path, args.seconds, args.conns)
            cpu = front.cpu_s() + down.cpu_s() - cpu0
            front.stop()
            down.stop()
            res[mode].append({"rps": rps, "ok": (total - bad) / args.seconds,
                              "p50": p50, "p99": p99, "bad": bad,
                              "cpu_us": cpu * 1e6 / max(total, 1)})
            print("  round %d %-7s %8.0f req/s  p50 %6.1f ms  p99 %6.1f ms  %5.0f us CPU/req"
                  "  non-2xx %d" % (r + 1, mode, rps, p50, p99, res[mode][-1]["cpu_us"], bad),
                  file=sys.stderr)
    out.append("### Throughput: %d connections on `%s`, %d s per round, %d rounds\n"
               % (args.conns, url_path, args.seconds, args.rounds))
    out.append("| measure | libctx (min / median / max) | contexts off (min / median / max) "
               "| libctx / off (medians) |")
    out.append("|---|---|---|---|")
    for key, label in (("rps", "answers/s"), ("ok", "200 answers/s (within budget)"),
                       ("p50", "p50 latency, ms"),
                       ("p99", "p99 latency, ms"), ("cpu_us", "CPU per request, µs (both services)"),
                       ("bad", "non-2xx answers")):
        a = [x[key] for x in res["libctx"]]
        b = [x[key] for x in res["no ctx"]]
        mb = statistics.median(b)
        ratio = "%.2f" % (statistics.median(a) / mb) if mb else "-"
        out.append("| %s | %s | %s | %s |" % (label, spread(a), spread(b), ratio))
    out.append("")


def go_load(args, front, extra):
    cmd = [args.load, "-url", front.url, "-c", str(args.conns), "-d", "%ds" % args.seconds,
           "-budget", "%dms" % BUDGET_MS] + extra
    line = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    print("  load: " + line, file=sys.stderr)
    return dict(kv.split("=") for kv in line.split())


def settle(svcs):
    """ms until every in-flight gauge of every service reads 0."""
    t = time.monotonic()
    while any(s.in_flight() for s in svcs):
        if time.monotonic() - t > 30:
            return float("inf")
        time.sleep(0.005)
    return (time.monotonic() - t) * 1000


def phase_faults(args, tmp, out):
    front, down = pair(args, tmp, "fault")
    # Warm up so that the idle figures include what any request makes once
    # (thread stacks, connection caches, the group's threads).
    go_load(argparse.Namespace(**{**vars(args), "seconds": 1}), front, ["-hangup", "0", "-hang", "0"])
    time.sleep(IDLE_WAIT)
    idle = {s: (s.metrics()["reportd_live_contexts"], s.fds(), s.rss_kb()) for s in (front, down)}
    r = go_load(args, front, ["-hangup", "0.33", "-hang", "0.10"])
    zero_ms = settle([front, down])
    time.sleep(IDLE_WAIT)
    after = {s: (s.metrics()["reportd_live_contexts"], s.fds(), s.rss_kb()) for s in (front, down)}
    late = [ms for s in (front, down) for ms in s.log_ms() if ms > BUDGET_MS + 50]
    logged = sum(len(s.log_ms()) for s in (front, down))
    codes = (front.stop(), down.stop())
    out.append("### Faults: one client in three hangs up at a random moment, the upstream hangs "
               "for 10%% of requests (%d connections, %d s)\n" % (args.conns, args.seconds))
    out.append("| measure | value | target |")
    out.append("|---|---|---|")
    out.append("| answered requests/s (200 + 504) | %s | |" % r["answered_per_s"])
    out.append("| 200 / 504 / client hung up / other / client errors | %s / %s / %s / %s / %s | |"
               % (r["ok"], r["deadline"], r["client_gone"], r["other"], r["errors"]))
    out.append("| in-flight gauges (both services) back to 0 after the load | %.0f ms | ≤ 100 ms |"
               % zero_ms)
    for s, name in ((front, "front"), (down, "downstream")):
        (c0, f0, m0), (c1, f1, m1) = idle[s], after[s]
        out.append("| %s: live contexts idle → after | %d → %d | equal |" % (name, c0, c1))
        out.append("| %s: open fds idle → after | %d → %d | equal |" % (name, f0, f1))
        out.append("| %s: RSS idle → after, KiB | %d → %d | back near idle |" % (name, m0, m1))
    out.append("| requests (of %d logged) that outlived the %d ms budget by > 50 ms | %d%s | 0 |"
               % (logged, BUDGET_MS, len(late), " (max %d ms)" % max(late) if late else ""))
    out.append("| exit status of both after SIGTERM | %d, %d | 0, 0 |" % codes)
    out.append("")


def phase_avalanche(args, tmp, out):
    front, down = pair(args, tmp, "aval")
    peak = {"req": 0, "parts": 0, "ctx": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            m = front.metrics()
            peak["req"] = max(peak["req"], m["reportd_requests_in_flight"])
            peak["parts"] = max(peak["parts"], sum(v for k, v in m.items()
                                                   if k.startswith("reportd_parts_in_flight")))
            peak["ctx"] = max(peak["ctx"], m["reportd_live_contexts"])
            time.sleep(0.1)

    t = threading.Thread(target=sample)
    t.start()
    r = go_load(args, front, ["-hangup", "0", "-hang", "1.0", "-probe", front.url + "/metrics"])
    stop.set()
    t.join()
    zero_ms = settle([front, down])
    longest = max(front.log_ms() or [0])
    front.stop()
    down.stop()
    out.append("### Avalanche: the upstream hangs for everyone (%d connections, %d s)\n"
               % (args.conns, args.seconds))
    out.append("| measure | value | target |")
    out.append("|---|---|---|")
    out.append("| front's /metrics answer time, median / max of %s probes | %s / %s ms | < 50 ms |"
               % (r["probes"], r["probe_p50_ms"], r["probe_max_ms"]))
    out.append("| answered requests/s (all 504) | %s | |" % r["answered_per_s"])
    out.append("| peak requests in flight (front) | %d | ≤ %d connections |" % (peak["req"], args.conns))
    out.append("| peak parts in flight (front) | %d | ≤ 3 × %d |" % (peak["parts"], args.conns))
    out.append("| peak live contexts (front) | %d | bounded |" % peak["ctx"])
    out.append("| longest request in the front's log | %d ms | ≤ budget + 50 = %d ms |"
               % (longest, BUDGET_MS + 50))
    out.append("| in-flight back to 0 after the load | %.0f ms | |" % zero_ms)
    out.append("")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reportd", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=200)
    ap.add_argument("--full", action="store_true", help="30 s per phase")
    args = ap.parse_args()
    if args.full:
        args.seconds = 30
    for tool in ("wrk", "go"):
        if shutil.which(tool) is None:
            print("bench-service: %s is missing (Debian: %s); skipped" %
                  (tool, "wrk" if tool == "wrk" else "golang-go"))
            return 0
    os.makedirs(args.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="reportd-bench-")
    try:
        args.load = os.path.join(tmp, "load")
        env = dict(os.environ, GO111MODULE="off", GOFLAGS="-mod=mod", GOPROXY="off",
                   GOPATH="/usr/share/gocode:" + os.path.join(tmp, "gopath"),
                   GOCACHE=os.path.join(os.path.abspath(args.out), "gocache"))
        subprocess.run(["go", "build", "-o", args.load, "load.go"], check=True, env=env,
                       cwd=os.path.join(HERE, "service_go"))
        go_version = subprocess.run(["go", "version"], capture_output=True,
                                    text=True).stdout.split()[2]
        out = ["## reportd under load (bench/service.py)\n",
               "wrk and a Go %s load generator on loopback; a front and a downstream reportd, "
               "SQLite, budget %d ms. The machine has %d cores shared by the services, the load "
               "generators and other work: the figures are what one run measured.\n"
               % (go_version, BUDGET_MS, os.cpu_count())]
        load_before = open("/proc/loadavg").read().split()[0]
        print("phase 1: throughput", file=sys.stderr)
        phase_throughput(args, tmp, out)
        print("phase 2: faults", file=sys.stderr)
        phase_faults(args, tmp, out)
        print("phase 3: avalanche", file=sys.stderr)
        phase_avalanche(args, tmp, out)
        out.append("Load average (1 min) when the run started: %s; when it ended: %s.\n"
                   % (load_before, open("/proc/loadavg").read().split()[0]))
        text = "\n".join(out)
        print(text)
        with open(os.path.join(args.out, "service.md"), "w") as f:
            f.write(text + "\n")
    finally:
        for svc in list(RUNNING):
            svc.proc.kill()
            svc.proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
