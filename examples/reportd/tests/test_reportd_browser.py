#!/usr/bin/python3
# SPDX-License-Identifier: MIT

"""A person closing the page: reportd's page in a real browser.

    test_reportd_browser.py REPORTD [--screenshot PATH]

Starts two reportd processes (a front one whose /report calls the other's
/task), opens the front's page in headless Chromium (Debian's chromium and
chromium-driver, through python3-selenium), and:

  - starts a 3 s report and closes the tab after 300 ms (three times);
  - starts a 3 s report and presses Cancel after 300 ms (three times);
  - starts a 3 s report from the form, checks that the live tree shows the
    request (its deadline counting down, its parts), saves a screenshot of
    it when asked, and presses Cancel.

Each time reportd must log the client as gone with every part stopped
within 50 ms of the browser dropping the connection, and after Cancel also
within 50 ms of the page's abort (the best of the three tries), and its
gauges must read zero.  The browser reaches reportd through
a small relay in this script that notes when the browser closes each
request's connection; the page notes when it left the request (Cancel, or
the tab's pagehide), and the time from there is shown too.  The page's
list of ended requests must show the cause and the cancel site.  Exits 77
(skipped) when Chromium, its driver or Selenium is missing.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    print("SKIP: python3-selenium is not installed", file=sys.stderr)
    sys.exit(77)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
STOP_BOUND_MS = 50  # every part stopped within this of the client leaving


class Reportd:
    """One reportd; its stderr lines kept with the time each arrived."""

    def __init__(self, name, exe, *args):
        self.name = name
        self.lines = []  # (monotonic time, line)
        self.cv = threading.Condition()
        self.proc = subprocess.Popen([exe, "--listen", "127.0.0.1:0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = self.proc.stdout.readline()
        m = re.match(r"listening on 127\.0\.0\.1:(\d+)", first)
        if not m:
            raise RuntimeError(f"{name} did not start: {first!r}")
        self.url = f"http://127.0.0.1:{m.group(1)}"
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stderr:
            # Wall-clock time, as the page's performance.timeOrigin + now().
            now = time.time()
            sys.stderr.write(f"[{self.name}] {line}")
            with self.cv:
                self.lines.append((now, line.rstrip("\n")))
                self.cv.notify_all()

    def line(self, *needles, timeout=10):
        """The first log line holding every needle, with its arrival time."""
        end = time.monotonic() + timeout
        with self.cv:
            while True:
                for t, line in self.lines:
                    if all(n in line for n in needles):
                        return t, line
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.name}: no line with {needles}")
                self.cv.wait(left)

    def metric(self, name):
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return int(line.split()[1])
        raise AssertionError(f"no metric {name}")

    def in_flight(self):
        return self.metric("reportd_requests_in_flight") + sum(
            self.metric(f'reportd_parts_in_flight{{part="{p}"}}') for p in ("compute", "db", "upstream"))

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


class Observer:
    """A TCP relay between the browser and reportd that notes when the
    browser drops the connection of each request (by its X-Request-Id):
    the moment the client left, as reportd can know it.  It passes the
    close on at once."""

    def __init__(self, backend_port):
        self.backend = backend_port
        self.closed = {}  # request id -> wall-clock time the browser closed
        self.lock = threading.Lock()
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(64)
        self.url = f"http://127.0.0.1:{self.srv.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", self.backend))
            for s in (c, u):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            state = {"id": None}
            threading.Thread(target=self._pump, args=(c, u, state, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, state, False), daemon=True).start()

    def _pump(self, src, dst, state, from_browser):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                if from_browser and state["id"] is not None:
                    with self.lock:
                        self.closed.setdefault(state["id"], time.time())
                for s in (dst, src):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    s.close()
                return
            if from_browser:
                m = re.search(rb"(?im)^x-request-id: *(\S+)", data)
                if m:
                    state["id"] = m.group(1).decode()
            try:
                dst.sendall(data)
            except OSError:
                pass

    def closed_at(self, rid, timeout=10):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                if rid in self.closed:
                    return self.closed[rid]
            time.sleep(0.002)
        raise AssertionError(f"the browser never closed the connection of {rid}")

    def stop(self):
        self.srv.close()


def field(line, key):
    m = re.search(r"(?:^| )" + key + r"=(\S*)", line)
    return m.group(1) if m else None


def browser(tmp):
    opts = Options()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1280,900", "--no-first-run", "--disable-extensions",
              "--user-data-dir=" + os.path.join(tmp, "profile")):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(DRIVER, log_output=os.path.join(tmp, "driver.log")),
                            options=opts)


def open_page(driver, url):
    """A new tab with the page at url, the tree drawn at least once."""
    driver.switch_to.new_window("tab")
    driver.get(url + "/")
    WebDriverWait(driver, 10).until(
        lambda d: "context.Background" in d.find_element(By.ID, "tree").text)
    for part, ms in (("compute", 3000), ("db", 3000), ("upstream", 3000)):
        box = driver.find_element(By.ID, part)
        box.clear()
        box.send_keys(str(ms))
    return driver.current_window_handle


def start_report(driver, wait_tree):
    """Presses Start; the request's ID (the page shows it at once) and when.
    With wait_tree, also waits until the tree shows the request."""
    driver.find_element(By.ID, "start").click()
    started = time.monotonic()
    rid = re.search(r"request (page-[0-9a-f]+) running", driver.find_element(By.ID, "status").text)
    assert rid, driver.find_element(By.ID, "status").text
    if wait_tree:
        WebDriverWait(driver, 10).until(
            lambda d: "(this page)" in d.find_element(By.ID, "tree").text)
    return rid.group(1), started


def check_gone(front, down, obs, rid, page_left_ms, how):
    """reportd logged rid as gone with every part stopped, and its gauges
    read zero.  Returns how long after the browser dropped the connection
    the log line came, and how long after the page left the request
    (page_left_ms: ms since the epoch, noted by the page)."""
    t, line = front.line(f"request_id={rid} ", "path=/report")
    from_conn = (t - obs.closed_at(rid)) * 1000
    from_page = t * 1000 - page_left_ms
    print(f"   {how}: reportd's log line came {from_conn:.1f} ms after the browser closed the "
          f"connection ({from_page:.1f} ms after the page left): {line}", file=sys.stderr)
    assert field(line, "outcome") == "client_gone", line
    assert field(line, "status") == "499", line
    assert field(line, "cancelled") == "compute,db,upstream", line
    _, task = down.line(f"request_id={rid} ", "path=/task")
    assert "cancelled=task" in task, task
    end = time.monotonic() + 5
    while front.in_flight() != 0 and time.monotonic() < end:
        time.sleep(0.005)
    assert front.in_flight() == 0
    return from_conn, from_page


def aborted_at(driver):
    """When the page aborted its request (ms since the epoch)."""
    v = driver.find_element(By.ID, "status").get_attribute("data-aborted-at")
    assert v, "the page did not note its Cancel"
    return float(v)


def check_ended_list(driver, rid):
    """The page's list of ended requests shows rid's cause and cancel site."""
    # The list is redrawn ten times a second: read it in one script call.
    rows = lambda d: d.execute_script(
        "return Array.from(document.querySelectorAll('#ended tbody tr'), r => r.innerText)")
    WebDriverWait(driver, 10).until(lambda d: any(rid in r for r in rows(d)))
    row = [r for r in rows(driver) if rid in r][0]
    assert "client_gone" in row and "client disconnected" in row and "peer_close" in row, row


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    exe = sys.argv[1]
    shot = sys.argv[sys.argv.index("--screenshot") + 1] if "--screenshot" in sys.argv else None
    for need in (CHROMIUM, DRIVER):
        if not os.access(need, os.X_OK):
            print(f"SKIP: {need} is missing (Debian: chromium, chromium-driver)", file=sys.stderr)
            sys.exit(77)

    tmp = tempfile.mkdtemp(prefix="reportd-browser.")
    down = front = driver = obs = None
    try:
        down = Reportd("down", exe, "--budget-ms", "10000")
        front = Reportd("front", exe, "--upstream", down.url, "--budget-ms", "10000")
        obs = Observer(int(front.url.rsplit(":", 1)[1]))
        driver = browser(tmp)
        driver.get("about:blank")  # the first tab stays, so the browser does too
        home = driver.current_window_handle

        # 1. The person closes the tab after 300 ms; 2. presses Cancel after
        # 300 ms.  The bound holds for the best of three tries of each, so
        # that one try slowed by a loaded machine does not fail a property
        # that holds; every other check holds for every try.
        for how in ("tab closed", "Cancel pressed"):
            print(f"-- {how} after 300 ms", file=sys.stderr)
            best = best_page = None
            for _ in range(3):
                open_page(driver, obs.url)
                rid, started = start_report(driver, False)
                time.sleep(max(0, 0.3 - (time.monotonic() - started)))  # the person's 300 ms
                if how == "tab closed":
                    driver.close()
                    driver.switch_to.window(home)
                    # The closed page noted when it went; read it from a page
                    # of the same origin.
                    driver.get(obs.url + "/metrics")
                    left = driver.execute_script("return localStorage.getItem('reportd-left-at')")
                    assert left is not None, "the page did not note its closing"
                    driver.execute_script("localStorage.removeItem('reportd-left-at')")
                    latency, from_page = check_gone(front, down, obs, rid, float(left), how)
                else:
                    driver.find_element(By.ID, "cancel").click()
                    latency, from_page = check_gone(front, down, obs, rid, aborted_at(driver), how)
                    check_ended_list(driver, rid)
                    assert "cancelled by you" in driver.find_element(By.ID, "status").text
                    driver.close()
                    driver.switch_to.window(home)
                best = latency if best is None else min(best, latency)
                best_page = from_page if best_page is None else min(best_page, from_page)
            print(f"   {how}: best {best:.1f} ms from the connection's close, {best_page:.1f} ms "
                  "from the page's", file=sys.stderr)
            assert best <= STOP_BOUND_MS, f"{how}: {best:.1f} ms > {STOP_BOUND_MS} ms"
            # After Cancel the page's own moment bounds it too.  When a tab
            # closes, Chromium takes tens to hundreds of milliseconds to drop
            # the connection of a page it tears down, which no server sees.
            if how == "Cancel pressed":
                assert best_page <= STOP_BOUND_MS, f"{how}: {best_page:.1f} ms > {STOP_BOUND_MS} ms"

        # 3. The live tree while a report runs (the requests above in the list
        # of ended ones), then Cancel.
        print("-- the live tree", file=sys.stderr)
        open_page(driver, obs.url)
        rid, started = start_report(driver, True)
        # Let the countdown and the parts' bars move, then look.
        time.sleep(max(0, 0.8 - (time.monotonic() - started)))
        tree = driver.execute_script("return document.getElementById('tree').innerText")
        print("   the tree:\n      " + tree.replace("\n", "\n      "), file=sys.stderr)
        for what in ("Extract(trace", "WithPeerClose", "WithDeadline", "request-id=" + rid,
                     "compute", "db", "upstream"):
            assert what in tree, f"{what!r} not in the tree:\n{tree}"
        assert re.search(r"\b\d\.\d\d s\b", tree), "no deadline counting down:\n" + tree
        if shot:
            driver.save_screenshot(shot)
            print(f"   screenshot: {shot}", file=sys.stderr)
        driver.find_element(By.ID, "cancel").click()
        check_gone(front, down, obs, rid, aborted_at(driver), "Cancel after the screenshot")
        check_ended_list(driver, rid)
        driver.close()
        driver.switch_to.window(home)

        # The JSON the page reads is valid and lists what ended.
        with urllib.request.urlopen(front.url + "/debug/ctx?format=json", timeout=10) as r:
            data = json.load(r)
        assert data["tree"][0]["depth"] == 0 and len(data["tree"]) == 1, data["tree"]
        gone = [e for e in data["ended"] if e["outcome"] == "client_gone" and e["path"] == "/report"]
        assert len(gone) == 7, data["ended"]
        assert all(e["cancel_site"]["func"] == "peer_close" for e in gone), gone
        print("ok", file=sys.stderr)
    finally:
        if driver is not None:
            driver.quit()
        if obs is not None:
            obs.stop()
        for s in (front, down):
            if s is not None:
                s.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
