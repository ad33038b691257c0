"""README's MLflow screenshot: a 2-job sweep's parent run with its children expanded, in MLflow's UI,
taken by headless Chromium (Debian's /usr/bin/chromium). Also a check that the UI renders our runs.

    python scripts/mlflow_screenshot.py [--out docs/img/mlflow_sweep.png] [--store PATH/mlflow.db]

Without --store it first trains a tiny 2-job multirun (alexnet, resnet18; 1 epoch, 64 images, CPU)
with tracker=mlflow into a temp folder. Then it starts `mlflow server` on a free loopback port,
opens the experiment's runs table in Chromium, clicks the sweep parent's expander and saves the
page. The server and Chromium are stopped by their pids at the end.

Chromium is driven over its DevTools protocol through --remote-debugging-pipe (fds 3 and 4, JSON
messages ended by NUL) rather than a websocket, so nothing beyond the standard library is needed
(the venv has no websocket client, and Playwright would bring its own browser).
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SWEEP = ["-m", "model=alexnet,resnet18", "tracker=mlflow", "tracker.wait=true", "trainer.epochs=1",
         "dataset.limit=64", "device=cpu", "trainer.log_feature_maps=false"]
WIDTH, HEIGHT = 1500, 520  # CSS pixels of the page (the screenshot's size)


def train_sweep(workdir: Path) -> Path:
    """The tiny multirun; returns its store (workdir/outputs/mlflow.db)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "cnnlab.run", *SWEEP], cwd=workdir, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return workdir / "outputs" / "mlflow.db"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return
        except OSError:
            if time.time() > deadline:
                raise RuntimeError(f"{url} did not answer in {timeout:.0f} s") from None
            time.sleep(1)


class Chromium:
    """Headless Chromium and one page, driven over --remote-debugging-pipe."""

    def __init__(self, profile: Path) -> None:
        to_chrome, self._w = os.pipe()  # we write commands; Chromium reads them on fd 3
        self._r, from_chrome = os.pipe()  # Chromium writes answers on fd 4
        # Out of the way of 3 and 4 first, so the dup2s in the child cannot clobber each other.
        a, b = fcntl.fcntl(to_chrome, fcntl.F_DUPFD, 10), fcntl.fcntl(from_chrome, fcntl.F_DUPFD, 10)

        def fds() -> None:
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            ["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             f"--user-data-dir={profile}", "--hide-scrollbars", f"--window-size={WIDTH},{HEIGHT}", "about:blank"],
            preexec_fn=fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for fd in (to_chrome, from_chrome, a, b):
            os.close(fd)
        self._buf, self._id, self.session = b"", 0, None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1,
                  mobile=False)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command (to the page once attached) and return its result; events are skipped."""
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self._buf:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the pipe")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def js(self, expr: str) -> Any:
        return self.call("Runtime.evaluate", expression=expr, returnByValue=True)["result"].get("value")

    def until(self, expr: str, timeout: float = 90) -> None:
        """Poll a JS expression until it is truthy (a DOM node too: only its truth comes back)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.js(f"!!({expr})"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the page never satisfied: {expr}")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._w)
        os.close(self._r)


# MLflow 3.18's runs table (ag-grid): the sweep parent's row holds the run name "sweep <folder>",
# and the expander (+) is the button in its Run Name cell.
ROWS = "[...document.querySelectorAll('[role=row]')]"
PARENT_ROW = ROWS + ".find(r => /sweep \\d/.test(r.textContent))"
EXPAND = f"(() => {{ const b = {PARENT_ROW}?.querySelector('[col-id*=\"Run Name\"] button'); b?.click(); return !!b; }})()"
# The assistant side panel covers a third of the page: closed, if it is there.
CLOSE_PANEL = "(() => { const b = document.querySelector('button[aria-label=Close]'); b?.click(); return !!b; })()"


def shoot(store: Path, out: Path, workdir: Path) -> None:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store}",
                               "--host", "127.0.0.1", "--port", str(port)], cwd=workdir,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # its own group: the server and its workers
    browser = None
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health")
        exp = json.loads(urllib.request.urlopen(urllib.request.Request(
            f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=cnnlab"), timeout=10).read())
        exp_id = exp["experiment"]["experiment_id"]
        browser = Chromium(workdir / "chromium-profile")
        browser.call("Page.enable")
        browser.call("Page.navigate", url=f"{base}/#/experiments/{exp_id}/runs")  # "Training runs"
        browser.until(PARENT_ROW)
        time.sleep(2)  # the table's columns settle after the first rows
        browser.js(CLOSE_PANEL)
        if not browser.js(EXPAND):
            raise RuntimeError("no expander button in the sweep parent's row")
        browser.until(ROWS + ".filter(r => /model=(alexnet|resnet18)/.test(r.textContent)).length >= 2")
        time.sleep(2)
        png = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
        out.write_bytes(png)
        print(f"wrote {out} ({len(png) // 1024} KiB)")
    finally:
        if browser is not None:
            browser.close()
        os.killpg(server.pid, signal.SIGTERM)  # the group this script started, by its id
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "mlflow_sweep.png")
    ap.add_argument("--store", type=Path, help="an existing store with a sweep (default: train one)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlflow_shot_") as tmp:
        store = a.store.resolve() if a.store else train_sweep(Path(tmp))
        shoot(store, a.out.resolve(), Path(tmp))


if __name__ == "__main__":
    main()
