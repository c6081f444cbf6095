"""A small WebDriver BiDi client for a stock Firefox (Debian's firefox-esr), for the dashboard's
browser tests.

Why not Playwright: its Firefox path wants either its own patched build (`playwright install
firefox`, a download) or, with ``channel="moz-firefox"``, WebDriver BiDi commands that Firefox
ESR 153 does not have yet (``emulation.setMediaFeaturesOverride``: "unknown command" when a
context is created). Firefox speaks WebDriver BiDi natively (`--remote-debugging-port`), so the
few commands the tests need are sent here directly: create a tab, navigate, evaluate, capture a
screenshot, and collect console errors and uncaught exceptions (``log.entryAdded``).

The tab offers what the tests use of Playwright's page: goto, evaluate, wait for a function,
screenshot, and the console errors. Values come back through ``JSON.stringify``.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

# Quiet, offline, no first-run pages (Firefox applies the Remote Agent's own recommended
# preferences on top of these).
PREFS = {
    "browser.shell.checkDefaultBrowser": False,
    "browser.aboutwelcome.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "app.update.disabledForTesting": True,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "browser.safebrowsing.update.enabled": False,
    "extensions.update.enabled": False,
}
LISTENING = re.compile(r"WebDriver BiDi listening on (ws://\S+)")


class BidiError(RuntimeError):
    pass


class Firefox:
    """One headless Firefox process and its BiDi session."""

    def __init__(self, executable: Path, launch_timeout_s: float = 60.0) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="volstream-firefox-"))
        (self.profile / "user.js").write_text(
            "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in PREFS.items())
        )
        cmd = [str(executable), "--headless", "--no-remote", "--remote-debugging-port=0"]
        self.proc = subprocess.Popen(
            [*cmd, "--profile", str(self.profile), "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "MOZ_CRASHREPORTER_DISABLE": "1"},
            start_new_session=True,
        )
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._replies: dict[int, dict[str, Any]] = {}
        self._errors: dict[str, list[str]] = {}  # browsing context -> console errors
        url = self._wait_listening(launch_timeout_s)
        self._stack = contextlib.ExitStack()
        self.ws: ClientConnection = self._stack.enter_context(
            connect(url + "/session", max_size=256 * 2**20)
        )
        self.version = self.send("session.new", {"capabilities": {}})["capabilities"][
            "browserVersion"
        ]
        self.send("session.subscribe", {"events": ["log.entryAdded"]})

    def _wait_listening(self, timeout_s: float) -> str:
        assert self.proc.stderr is not None
        found: list[str] = []
        lines: list[str] = []

        def read() -> None:
            assert self.proc.stderr is not None
            for raw in self.proc.stderr:
                line = raw.decode(errors="replace")
                if not found:
                    lines.append(line)
                    if m := LISTENING.search(line):
                        found.append(m.group(1))
            # Firefox keeps writing to stderr; draining it keeps the pipe from filling.

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not found:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise BidiError("Firefox did not start its BiDi server: " + "".join(lines)[-2000:])
            time.sleep(0.05)
        return found[0]

    def send(self, method: str, params: dict[str, Any], timeout_s: float = 60.0) -> Any:
        """One command and its result; events that arrive meanwhile are recorded."""
        with self._lock:
            command_id = next(self._ids)
            self.ws.send(json.dumps({"id": command_id, "method": method, "params": params}))
            deadline = time.monotonic() + timeout_s
            while True:
                message = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
                if message.get("type") == "event":
                    self._event(message)
                elif message.get("id") == command_id:
                    if message.get("type") == "error":
                        raise BidiError(f"{method}: {message['error']}: {message.get('message')}")
                    return message["result"]

    def _event(self, message: dict[str, Any]) -> None:
        if message.get("method") != "log.entryAdded":
            return
        entry = message["params"]
        if entry.get("level") != "error":
            return
        context = entry.get("source", {}).get("context", "")
        text = entry.get("text") or ""
        if entry.get("type") == "javascript":
            text = f"page error: {text}"
        self._errors.setdefault(context, []).append(text)

    def new_tab(self, width: int, height: int) -> Tab:
        context = self.send("browsingContext.create", {"type": "tab"})["context"]
        self.send(
            "browsingContext.setViewport",
            {"context": context, "viewport": {"width": width, "height": height}},
        )
        return Tab(self, context)

    def close(self) -> None:
        if self.proc.poll() is None:
            # Firefox may close the socket before it answers.
            with contextlib.suppress(Exception):
                self.send("browser.close", {}, timeout_s=10)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if hasattr(self, "_stack"):
            self._stack.close()
        shutil.rmtree(self.profile, ignore_errors=True)


class Tab:
    def __init__(self, browser: Firefox, context: str) -> None:
        self.browser = browser
        self.context = context

    @property
    def errors(self) -> list[str]:
        return self.browser._errors.setdefault(self.context, [])

    def goto(self, url: str) -> None:
        self.browser.send(
            "browsingContext.navigate", {"context": self.context, "url": url, "wait": "complete"}
        )

    def evaluate(self, js: str) -> Any:
        """The value of a JS expression (JSON-serialisable; a value that is not becomes true)."""
        expression = (
            f"(() => {{ const v = ({js}); if (v === undefined) return 'null';"
            " try { return JSON.stringify(v); } catch (e) { return 'true'; } })()"
        )
        result = self.browser.send(
            "script.evaluate",
            {
                "expression": expression,
                "target": {"context": self.context},
                "awaitPromise": True,
                "resultOwnership": "none",
            },
        )
        if result.get("type") == "exception":
            details = result["exceptionDetails"]
            raise BidiError(f"evaluating {js[:80]!r}: {details.get('text')}")
        return json.loads(result["result"]["value"])

    def wait_for(self, js: str, timeout_ms: int) -> Any:
        """Polls until the expression is truthy (as Playwright's wait_for_function); its value."""
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            value = self.evaluate(js)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout_ms} ms for {js[:120]!r} (last: {value!r})")
            time.sleep(0.05)

    def screenshot(self, path: Path) -> None:
        data = self.browser.send(
            "browsingContext.captureScreenshot",
            {"context": self.context, "origin": "document"},
        )["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        self.browser.send("browsingContext.close", {"context": self.context})
