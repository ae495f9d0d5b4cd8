"""Run ONNX models in headless Chromium with onnxruntime-web, from a static server on 127.0.0.1.

Used by tests/test_browser.py and benchmarks/bench_browser.py. Needs Debian's `chromium` and
`npm install --prefix tests/browser` (onnxruntime-web); .ci/run installs both.
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import tempfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent / "browser"
ORT_WEB = HERE / "node_modules" / "onnxruntime-web" / "dist"


def chromium() -> str | None:
    return next((path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))),
                None)


def missing() -> str | None:
    """Why the browser cannot run here, or None."""
    if chromium() is None:
        return "no chromium on PATH (apt-get install chromium; .ci/run does)"
    if not (ORT_WEB / "ort.all.min.js").is_file():
        return "onnxruntime-web is not installed (npm install --prefix tests/browser; .ci/run does)"
    return None


class _Handler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm",
                      ".mjs": "text/javascript", ".js": "text/javascript", ".onnx": "application/octet-stream"}

    def __init__(self, *args, results: queue.Queue, **kwargs):
        self.results = results
        super().__init__(*args, **kwargs)

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(204)
        self.end_headers()
        self.results.put(json.loads(body))

    def log_message(self, *args):
        pass


def run_in_browser(models: dict[str, Path], ids: list[list[int]], mask: list[list[int]], repeats: int = 5,
                   timeout: float = 600) -> dict:
    """Load each model (name -> .onnx path) in the page, run `ids`, return what the page posted:
    {backends, webgpu, models: {name: {backend: {load_ms, latency_ms, dims, output} or {error}}}}."""
    with tempfile.TemporaryDirectory(prefix="projclust-browser-") as tmp:
        root = Path(tmp) / "site"
        root.mkdir()
        (root / "ort").symlink_to(ORT_WEB)
        shutil.copy(HERE / "index.html", root / "index.html")
        cases = {"batch": {"ids": ids, "mask": mask, "repeats": repeats}, "models": []}
        for name, path in models.items():
            (root / f"{name}.onnx").symlink_to(Path(path).resolve())
            cases["models"].append({"name": name, "url": f"{name}.onnx"})
        (root / "cases.json").write_text(json.dumps(cases))
        results: queue.Queue = queue.Queue()
        server = ThreadingHTTPServer(("127.0.0.1", 0),
                                     partial(_Handler, directory=str(root), results=results))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        browser = subprocess.Popen(
            [chromium(), "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run",
             "--enable-unsafe-webgpu", f"--user-data-dir={tmp}/profile",
             f"http://127.0.0.1:{server.server_address[1]}/index.html"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            return results.get(timeout=timeout)
        finally:
            browser.terminate()
            try:
                browser.wait(timeout=20)
            except subprocess.TimeoutExpired:
                browser.kill()
            server.shutdown()
            server.server_close()
