"""The report page in a real browser: headless Chromium driven over the DevTools protocol.

A small product goes through :func:`casm_cloud.report.write_report`; its
``index.html`` is opened from disk in Debian's Chromium, driven through the
Chrome DevTools Protocol over a websocket (``websocket-client``, no driver
binary).  Checked: every image decoded (``naturalWidth > 0``), every table has
rows, every local link points at a file that exists (or an anchor on the page),
and nothing was logged as an error (console, uncaught exceptions, failed
loads).  A full-page ``screenshot.png`` is written beside ``index.html``.

Skipped, with the reason, where Chromium is not installed (``.ci/run``
installs Debian's ``chromium``).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from casm_cloud.grid import EASE2Grid
from casm_cloud.report import scores_against_truth, sensor_changes_from_source, write_report
from casm_cloud.testing import make_product, make_truth

WINDOW = EASE2Grid("M25").window_by_name("tiny").subwindow(slice(0, 4), slice(0, 5))
TIMES = pd.date_range("2008-07-01", "2013-03-01", freq="3D")
# As .ci/run and the machine notes say: no background traffic on a closed network.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--hide-scrollbars",
    "--window-size=1280,900", "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0", "--allow-file-access-from-files",
]
TIMEOUT = 60.0


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class _CDP:
    """A minimal Chrome DevTools Protocol client on one page target."""

    def __init__(self, ws_url: str):
        import websocket

        self._ws = websocket.create_connection(ws_url, timeout=TIMEOUT, suppress_origin=True)
        self._ids = itertools.count(1)
        self.events: list[dict] = []

    def send(self, method: str, **params) -> dict:
        msg_id = next(self._ids)
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self._ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_for(self, method: str, timeout: float = TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event["method"] == method:
                return event
        while time.monotonic() < deadline:
            msg = json.loads(self._ws.recv())
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == method:
                    return msg
        raise TimeoutError(f"no {method} within {timeout} s")

    def evaluate(self, expression: str):
        out = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                        awaitPromise=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"page script failed: {out['exceptionDetails']}")
        return out["result"].get("value")

    def close(self):
        self._ws.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless Chromium; yields the HTTP address of its DevTools endpoint."""
    exe = _chromium()
    if exe is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run does)")
    pytest.importorskip("websocket", reason="websocket-client is not installed (dev extra)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    log = open(profile.parent / "chromium.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=log, stderr=subprocess.STDOUT)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + TIMEOUT
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.close()
            pytest.fail("Chromium did not start:\n"
                        + (profile.parent / "chromium.log").read_text(errors="replace")[-4000:])
        time.sleep(0.1)
    port = int(port_file.read_text().split()[0])
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _page_target(address: str) -> str:
    deadline = time.monotonic() + TIMEOUT
    while True:
        with urllib.request.urlopen(f"{address}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t.get("type") == "page"]
        if pages:
            return pages[0]["webSocketDebuggerUrl"]
        if time.monotonic() > deadline:
            raise TimeoutError("Chromium shows no page target")
        time.sleep(0.1)


@pytest.fixture(scope="module", params=["truth", "no-truth"])
def report(request, tmp_path_factory):
    """A report of a small simulated product: with every section the page has, and as a real
    run's (no truth: the consistency checks from SMAP and the two networks instead)."""
    import numpy as np

    truth = make_truth(WINDOW, TIMES, seed=4, time_chunk=50)
    product = make_product(WINDOW, TIMES, seed=4, truth=truth, era_bias=(0.02, 0.0, -0.01),
                           time_chunk=50)
    rng = np.random.default_rng(0)
    n = 12
    validation = pd.DataFrame({
        "product": "casm", "station": [f"st{i}" for i in range(n)],
        "network": rng.choice(["SCAN", "USCRN"], n), "lat": rng.uniform(37, 38.5, n),
        "lon": rng.uniform(-99, -97.5, n), "n": rng.integers(100, 300, n),
        "R": rng.uniform(0.4, 0.9, n), "ubRMSE": rng.uniform(0.02, 0.06, n),
        "bias": rng.normal(0, 0.02, n),
    })
    changes = sensor_changes_from_source(product)
    out = tmp_path_factory.mktemp("browser") / "report"
    if request.param == "no-truth":
        from casm_cloud.report.checks import data_checks

        smap = truth[["sm_l1"]].rename(sm_l1="sm").sel(time=slice("2010-06-01", None))
        nets = {f"nn_{k}": make_product(WINDOW, TIMES, seed=i, truth=truth, time_chunk=50)
                for i, k in enumerate(("amsre", "smos"))}
        checks = data_checks(product, smap=smap, networks=nets, sensor_changes=changes,
                             eras={"AMSR-E": None, "SMOS": changes[list(changes)[-1]]},
                             min_obs=20)
        assert checks["vs_smap"] and checks["networks"]
        index = write_report(out, product=product, validation=validation,
                             sensor_changes=changes, checks=checks,
                             title="casm_cloud browser test")
        page = Path(index).read_text()
        assert "Consistency checks from the data" in page and "against the truth" not in page
        return Path(index)
    scores = scores_against_truth(product, truth, sensor_changes=changes)
    index = write_report(out, product=product, truth=truth, validation=validation,
                         sensor_changes=changes, scores=scores, title="casm_cloud browser test")
    return Path(index)


_INSPECT = """(async () => {
  // Images that are still loading get a moment (file:// loads are quick).
  await Promise.all([...document.images].map(img => img.complete ? null :
      new Promise(ok => { img.onload = img.onerror = ok; })));
  return {
    title: document.title,
    images: [...document.images].map(img => ({src: img.getAttribute('src'),
        url: img.currentSrc || img.src, complete: img.complete,
        naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight})),
    tables: [...document.querySelectorAll('table')].map((t, i) => ({index: i,
        rows: t.tBodies.length ? [...t.tBodies].reduce((n, b) => n + b.rows.length, 0)
                               : Math.max(t.rows.length - (t.tHead ? t.tHead.rows.length : 0), 0),
        cells: t.querySelectorAll('td').length,
        caption: (t.caption ? t.caption.textContent :
                  (t.previousElementSibling ? t.previousElementSibling.textContent : ''))
                 .trim().slice(0, 80)})),
    links: [...document.querySelectorAll('a[href]')].map(a => ({href: a.getAttribute('href'),
        url: a.href})),
    ids: [...document.querySelectorAll('[id]')].map(e => e.id),
    width: document.documentElement.scrollWidth,
    height: document.documentElement.scrollHeight,
  };
})()"""


def _errors(events: list[dict]) -> list[str]:
    out = []
    for e in events:
        p = e.get("params", {})
        if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console." + p["type"] + ": "
                       + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
        elif e["method"] == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            out.append("exception: " + d.get("exception", {}).get("description", d.get("text", "")))
        elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
            out.append(f"log ({p['entry'].get('source')}): {p['entry']['text']} "
                       f"{p['entry'].get('url', '')}")
        elif e["method"] == "Network.loadingFailed" and not p.get("canceled"):
            out.append(f"load failed: {p.get('errorText')} ({p.get('type')})")
    return out


def test_report_renders_in_chromium(browser, report):
    cdp = _CDP(_page_target(browser))
    try:
        for domain in ("Page", "Runtime", "Log", "Network"):
            cdp.send(f"{domain}.enable")
        cdp.send("Emulation.setDeviceMetricsOverride", width=1280, height=900,
                 deviceScaleFactor=1, mobile=False)
        cdp.events.clear()
        nav = cdp.send("Page.navigate", url=report.as_uri())
        assert "errorText" not in nav, nav
        cdp.wait_for("Page.loadEventFired")
        page = cdp.evaluate(_INSPECT)
        # The whole page in one picture, beside the report.
        height = min(int(page["height"]), 16000)
        shot = cdp.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                        clip={"x": 0, "y": 0, "width": max(int(page["width"]), 1280),
                              "height": height, "scale": 1})
        screenshot = report.parent / "screenshot.png"
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        time.sleep(0.2)  # late console messages
        cdp.evaluate("1")
        events = list(cdp.events)
    finally:
        cdp.close()
    print(f"screenshot: {screenshot}")

    assert page["title"] == "casm_cloud browser test"
    assert screenshot.stat().st_size > 10_000 and screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Every image loaded and decoded.
    assert len(page["images"]) >= 5, page["images"]
    broken = [i for i in page["images"] if not (i["complete"] and i["naturalWidth"] > 0
                                                 and i["naturalHeight"] > 0)]
    assert not broken, broken

    # Every table has rows (and cells).
    assert page["tables"], "no table on the page"
    empty = [t for t in page["tables"] if t["rows"] == 0 or t["cells"] == 0]
    assert not empty, empty

    # Every link resolves: local files exist, anchors exist on the page.
    assert page["links"], "no link on the page"
    unresolved = []
    for link in page["links"]:
        url = urllib.parse.urlsplit(link["url"])
        if link["href"].startswith("#"):
            if link["href"][1:] and link["href"][1:] not in page["ids"]:
                unresolved.append(link["href"])
        elif url.scheme == "file":
            path = Path(urllib.parse.unquote(url.path))
            if not (path.is_file() and path.stat().st_size > 0):
                unresolved.append(link["href"])
            elif report.parent not in path.parents:
                unresolved.append(f"{link['href']} (outside the report folder)")
        elif url.scheme not in ("http", "https", "mailto"):
            unresolved.append(link["href"])
    assert not unresolved, unresolved

    # Nothing went wrong on the way.
    errors = _errors(events)
    assert not errors, errors


def test_chromium_check_can_fail(browser, tmp_path):
    """The checks see a broken image, a dead link and a script error."""
    page_file = tmp_path / "index.html"
    page_file.write_text('<!doctype html><html><head><title>broken</title></head><body>'
                         '<img src="missing.png"><a href="missing.csv">t</a>'
                         '<table><thead><tr><th>a</th></tr></thead><tbody></tbody></table>'
                         '<script>console.error("boom"); undefinedFunction();</script>'
                         '</body></html>', encoding="utf-8")
    cdp = _CDP(_page_target(browser))
    try:
        for domain in ("Page", "Runtime", "Log", "Network"):
            cdp.send(f"{domain}.enable")
        cdp.events.clear()
        cdp.send("Page.navigate", url=page_file.as_uri())
        cdp.wait_for("Page.loadEventFired")
        page = cdp.evaluate(_INSPECT)
        cdp.evaluate("1")
        events = list(cdp.events)
    finally:
        cdp.close()
    assert page["images"][0]["naturalWidth"] == 0
    assert page["tables"][0]["rows"] == 0
    assert not os.path.exists(urllib.parse.unquote(urllib.parse.urlsplit(
        page["links"][0]["url"]).path))
    errors = "\n".join(_errors(events))
    assert "boom" in errors and "undefinedFunction" in errors
    assert "missing.png" in errors or "ERR_FILE_NOT_FOUND" in errors
