"""A headless Chromium page driven over the DevTools protocol: open a URL, wait for what it renders, read
its text, run a script in it, save a screenshot. For tests that check what a web UI shows (the MLflow UI)."""
from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import aiohttp  # an mlflow dependency: no package of our own for a websocket

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str | None:
    """Returns the path of the Chromium executable, None when it is not installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """One Chromium tab in its own process and profile; use as a context manager (the browser ends on exit)."""

    def __init__(self, profile: Path, width: int = 1600, height: int = 1000, start_timeout: float = 60):
        exe = chromium()
        if exe is None:
            raise FileNotFoundError("chromium is not installed: `apt-get install -y chromium`")
        profile.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                      f"--window-size={width},{height}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + start_timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"chromium did not open its DevTools port (exit {self.proc.returncode})")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            target = next(t for t in json.load(r) if t["type"] == "page")
        self.loop = asyncio.new_event_loop()
        self.session = self.loop.run_until_complete(self._session())
        self.ws = self.loop.run_until_complete(self.session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0))
        self.next_id = 0

    async def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    async def _call(self, method: str, params: dict) -> dict:
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:  # events arrive between the answers: skip them
            msg = json.loads((await self.ws.receive(timeout=120)).data)
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def call(self, method: str, **params) -> dict:
        """Returns the result of the DevTools protocol command `method`."""
        return self.loop.run_until_complete(self._call(method, params))

    def eval(self, js: str):
        """Returns the value of the JavaScript expression `js` in the page."""
        got = self.call("Runtime.evaluate", expression=js, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in got:
            raise RuntimeError(f"{js[:80]}: {got['exceptionDetails'].get('text')}")
        return got["result"].get("value")

    def goto(self, url: str) -> None:
        """Returns None once the page is navigating to `url` (its scripts render it afterwards: use wait_for)."""
        self.call("Page.navigate", url=url)

    def text(self) -> str:
        """Returns the page's visible text."""
        return self.eval("document.body ? document.body.innerText : ''") or ""

    def wait_for(self, *needles: str, timeout: float = 120) -> str:
        """Returns the page's text once every one of `needles` is in it; raises AssertionError naming the missing ones."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            missing = [n for n in needles if n not in text]
            if not missing:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"after {timeout:g} s the page lacks {missing}; it shows:\n{text[:3000]}")
            time.sleep(0.5)

    def screenshot(self, path: Path) -> Path:
        """Returns `path` after saving the visible page there as PNG."""
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        """Returns None after ending the browser (its whole process group)."""
        import os
        import signal

        if getattr(self, "ws", None) is not None:
            self.loop.run_until_complete(self.ws.close())
            self.loop.run_until_complete(self.session.close())
            self.loop.close()
            self.ws = None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def __enter__(self) -> "Page":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
