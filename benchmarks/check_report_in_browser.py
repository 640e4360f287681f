"""Load an HTML report in headless Chromium and fail on anything a reader would see go wrong.

    .venv/bin/python -m benchmarks.check_report_in_browser runs/sweep/report.html --screenshot /tmp/report.png

Drives Chromium through its DevTools protocol over a pipe (`--remote-debugging-pipe`: no port, no extra
package) and fails (exit status 1) on a console error, an uncaught exception, a resource that did not load (a
log entry of level error), a picture that did not decode, a reference to anything outside the file (http(s) or
protocol-relative URLs), a script, or a page without tables. With --screenshot it saves a PNG of the whole page,
for a person to look at. Chromium is the Debian package `chromium` (`make browser` installs it); the default
install does not need it.
"""
from __future__ import annotations

if not __package__:  # started as a file (python benchmarks/X.py): re-run as python -m benchmarks.X
    import _bootstrap  # noqa: F401

import argparse
import base64
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
# What the page is asked once it has loaded: its tables, pictures and any reference that leaves the file.
PROBE = """JSON.stringify({
  tables: document.querySelectorAll('table').length,
  rows: document.querySelectorAll('tr').length,
  images: [...document.images].map(i => ({alt: i.alt, width: i.naturalWidth, height: i.naturalHeight,
                                          complete: i.complete})),
  external: [...document.querySelectorAll('[src],[href]')].map(e => e.getAttribute('src') || e.getAttribute('href'))
            .filter(u => /^(https?:)?\\/\\//i.test(u.trim())),
  scripts: document.scripts.length,
  height: document.documentElement.scrollHeight,
})"""


def find_chromium(given: str | None = None) -> str | None:
    if given:
        return given
    return next((path for path in map(shutil.which, CHROMIUM) if path), None)


class DevTools:
    """The DevTools protocol over Chromium's pipe: commands on fd 3, answers and events on fd 4, NUL-separated."""

    def __init__(self, chromium: str, width: int, timeout: float):
        self.profile = tempfile.TemporaryDirectory(prefix="embedtune-chromium-")
        to_browser, self._commands = map(_above_4, os.pipe())
        self._answers, from_browser = map(_above_4, os.pipe())
        self.log = tempfile.TemporaryFile()  # Chromium's own chatter: a pipe nobody reads would fill and block it

        def wire() -> None:  # in the child, before exec: the pipe ends become its fds 3 and 4
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)

        args = [chromium, "--headless=new", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                f"--user-data-dir={self.profile.name}", f"--window-size={width},900", "about:blank"]
        self.process = subprocess.Popen(args, preexec_fn=wire, close_fds=False, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=self.log)
        os.close(to_browser)
        os.close(from_browser)
        self.deadline = time.monotonic() + timeout
        self.buffer, self.events, self.next_id = b"", [], 0

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        while True:
            event = self._read()
            if event.get("method") == method:
                return event
            self.events.append(event)

    def _read(self) -> dict:
        while b"\0" not in self.buffer:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self._answers], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._answers, 1 << 20)
            if not chunk:
                self.log.seek(0)
                raise RuntimeError("Chromium closed its pipe: " + self.log.read().decode(errors="replace")[-2000:])
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._commands)
        os.close(self._answers)
        self.log.close()
        self.profile.cleanup()


def _above_4(fd: int) -> int:
    """The same pipe end on a number above 4 (close-on-exec), so that wiring fds 3 and 4 cannot clobber it."""
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5)
    os.close(fd)
    return high


def problems_of(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions and error-level log entries (a resource that failed to load)."""
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found.append("console error: " + " ".join(str(a.get("value", a.get("description"))) for a in
                                                      params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            found.append("uncaught exception: " + str(details.get("exception", {}).get("description")
                                                      or details.get("text")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            found.append(f"log error ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip())
    return found


def check(page: Path, chromium: str, screenshot: Path | None = None, width: int = 1280,
          timeout: float = 60.0) -> tuple[dict, list[str]]:
    """(what the page holds, the problems found) after loading `page`; writes the screenshot if asked."""
    browser = DevTools(chromium, width, timeout)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired")
        probe = browser.send("Runtime.evaluate", {"expression": PROBE, "returnByValue": True}, session=session)
        seen = json.loads(probe["result"]["value"])
        problems = problems_of(browser.events)
        problems += [f"picture {i['alt']!r} did not decode" for i in seen["images"] if not i["width"]]
        problems += [f"reference outside the file: {url}" for url in seen["external"]]
        if seen["scripts"]:
            problems.append(f"{seen['scripts']} script(s) in a page that should need none")
        if not seen["tables"]:
            problems.append("no table on the page")
        if screenshot is not None:
            height = min(int(seen["height"]), 16000)
            browser.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                                "deviceScaleFactor": 1, "mobile": False},
                         session=session)
            shot = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                                session=session)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        return seen, problems
    finally:
        browser.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, help="the HTML file (e.g. a report.html written by run or sweep)")
    parser.add_argument("--screenshot", type=Path, help="save a PNG of the whole page here")
    parser.add_argument("--chromium", help="the browser binary (default: chromium on the PATH)")
    parser.add_argument("--width", type=int, default=1280, help="viewport width in CSS pixels")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for the whole check")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    chromium = find_chromium(args.chromium)
    if chromium is None:
        print("check_report_in_browser: no chromium on the PATH (apt-get install -y chromium, or make browser)",
              file=sys.stderr)
        return 2
    if not args.page.is_file():
        print(f"check_report_in_browser: {args.page}: no such file", file=sys.stderr)
        return 2
    seen, problems = check(args.page, chromium, args.screenshot, args.width, args.timeout)
    print(f"{args.page}: {seen['tables']} tables ({seen['rows']} rows), {len(seen['images'])} pictures "
          f"({sum(1 for i in seen['images'] if i['width'])} decoded), page {seen['height']} px high"
          + (f"; screenshot {args.screenshot}" if args.screenshot else ""))
    for problem in problems:
        print(f"  problem: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
