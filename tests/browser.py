"""Headless Chromium driven over the DevTools protocol, with nothing but the standard library.

Chromium's --remote-debugging-pipe speaks the DevTools protocol over two inherited file
descriptors (it reads commands on fd 3 and writes replies and events on fd 4, each message a JSON
object ended by a NUL byte), so no websocket client and no downloaded browser build are needed:
Debian's `chromium` package is enough. Used by tests/test_report_html.py and
benchmarks/html_report_size.py.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CHROMIUM = os.environ.get("CRITKIT_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio"]


class BrowserError(RuntimeError):
    pass


class Browser:
    """One headless Chromium with one page. Collects console errors, uncaught exceptions, log
    errors (a CSP violation or a failed load is one) and every URL the page requests."""

    def __init__(self, chromium: str = CHROMIUM, width: int = 1280, height: int = 900, timeout: float = 60.0):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="critkit-chromium-")
        self._log = open(Path(self.profile) / "stderr.log", "w+b")  # a file, not a pipe nobody reads that could fill
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # Copies above 10, closed on exec, so that placing them at 3 and 4 in the child overwrites nothing.
        keep = (fcntl.fcntl(to_child_r, fcntl.F_DUPFD_CLOEXEC, 10), fcntl.fcntl(from_child_w, fcntl.F_DUPFD_CLOEXEC, 10))

        def fds_3_and_4():  # in the child, before exec: the numbers Chromium expects (dup2 makes them inheritable)
            os.dup2(keep[0], 3)
            os.dup2(keep[1], 4)

        # close_fds=False: subprocess would close 3 and 4 after this hook (pass_fds cannot name fds the
        # parent may not have open); every other fd Python opens is close-on-exec anyway (PEP 446).
        self.proc = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-pipe",
                                      f"--window-size={width},{height}", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log,
                                     preexec_fn=fds_3_and_4, close_fds=False)
        for fd in (to_child_r, from_child_w, *keep):
            os.close(fd)
        self._buffer = b""
        self._next_id = 0
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.loaded = False
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False}, session=True)

    # ---------------------------------------------------------------------------- protocol

    def _send(self, method: str, params: dict | None, session: bool) -> int:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        return self._next_id

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("no answer from Chromium in time" + self._stderr())
            ready, _, _ = select.select([self._from_child], [], [], left)
            if ready:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    raise BrowserError("Chromium closed the pipe" + self._stderr())
                self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        message = json.loads(raw)
        self._event(message)
        return message

    def _event(self, message: dict) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.errors.append("exception: " + str(details.get("exception", {}).get("description") or details.get("text")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            self.errors.append("log: " + params["entry"].get("text", ""))
        elif method == "Network.requestWillBeSent":
            self.requests.append(params.get("request", {}).get("url", ""))
        elif method == "Page.loadEventFired":
            self.loaded = True

    def call(self, method: str, params: dict | None = None, session: bool = False) -> dict:
        wanted = self._send(method, params, session)
        deadline = time.monotonic() + self.timeout
        while True:
            message = self._receive(deadline)
            if message.get("id") == wanted:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})

    def _stderr(self) -> str:
        if self.proc.poll() is None:
            return ""
        self._log.seek(0)
        return f" (exit {self.proc.returncode}: {self._log.read().decode(errors='replace')[-2000:]})"

    # ----------------------------------------------------------------------------- helpers

    def open(self, url: str) -> None:
        """Navigate and wait for the load event."""
        self.loaded = False
        self.call("Page.navigate", {"url": url}, session=True)
        deadline = time.monotonic() + self.timeout
        while not self.loaded:
            self._receive(deadline)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True},
                           session=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {result['exceptionDetails'].get('exception', {}).get('description')}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str):
        """Poll an expression until it is truthy; BrowserError after `timeout` seconds."""
        deadline = time.monotonic() + self.timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"still false after {self.timeout:.0f} s: {expression}")
            time.sleep(0.05)

    def screenshot(self, path: str | Path, full_page: bool = False) -> Path:
        params: dict = {"format": "png"}
        if full_page:
            size = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1})
        data = self.call("Page.captureScreenshot", params, session=True)["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self._send("Browser.close", None, False)
                    self.proc.wait(timeout=10)
                except (OSError, subprocess.TimeoutExpired):
                    self.proc.kill()
                    self.proc.wait()
        finally:
            for fd in (self._to_child, self._from_child):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._log.close()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
