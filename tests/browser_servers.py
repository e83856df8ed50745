"""Servers and a browser for the end-to-end tests: JupyterLab and Voila on loopback with a random token, and
Debian's headless Chromium driven by Playwright (never a browser download), with pages whose console errors and
requests off the machine are recorded (:class:`Watched`).

Without Chromium the browser tests are skipped, with what to install, unless ``LIFTCAM_REQUIRE_BROWSER=1``
(``make test`` sets it where it can install Chromium: as root with apt-get, as on CI), where they fail instead.

Every server runs in its own process group with private Jupyter config, data and runtime folders; stopping it
terminates the group and any kernel it started (kernels run in sessions of their own), then kills what is left.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest

from liftcam_utils.files import write_atomically

CHROMIUM = Path("/usr/bin/chromium")
REQUIRE_BROWSER = "LIFTCAM_REQUIRE_BROWSER"
# without these, Chromium's own connections to the outside are refused by a closed network and logged as errors
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPO = Path(__file__).resolve().parent.parent
SCREENSHOTS = REPO / "results" / "screenshots"
STARTUP_SECONDS = 120
STOP_SECONDS = 15


def check_chromium(path: Path = CHROMIUM, environ=os.environ) -> None:
    """Skip the calling test when Chromium is not at ``path``; fail it instead when ``environ`` sets
    ``LIFTCAM_REQUIRE_BROWSER=1``, so that a machine meant to run the browser tests (CI) never skips them."""
    if path.is_file() and os.access(path, os.X_OK):
        return
    install = (f"{path} is missing: install Debian's chromium package (as root: apt-get install -y chromium) to run "
               f"the browser tests")
    if environ.get(REQUIRE_BROWSER) == "1":
        pytest.fail(f"{install}; {REQUIRE_BROWSER}=1 requires them (make test sets it as root where apt-get exists; "
                    f"{REQUIRE_BROWSER}=0 skips them)", pytrace=False)
    pytest.skip(install)


@contextlib.contextmanager
def headless_chromium():
    """Debian's Chromium, headless, launched by Playwright (see :func:`check_chromium` for when it is missing)."""
    check_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Watched:
    """A page whose console errors, uncaught exceptions and requests that leave the machine (anything but loopback,
    ``data:``, ``blob:`` and ``file:`` addresses) are recorded in :attr:`problems`."""

    def __init__(self, browser, height: int = 1000):
        self.page = browser.new_page(viewport={"width": 1400, "height": height})
        self.problems: list[str] = []
        self.page.on("console", lambda message: message.type == "error"
                     and self.problems.append(f"console error: {message.text}"))
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        self.page.on("request", self._check_host)

    def _check_host(self, request):
        address = urlsplit(request.url)
        if address.scheme not in ("data", "blob", "file") and address.hostname != "127.0.0.1":
            self.problems.append(f"request outside loopback: {request.url}")

    def screenshot(self, name: str) -> None:
        """The whole page, saved as ``results/screenshots/<name>``."""
        picture = self.page.screenshot(full_page=True)
        write_atomically(SCREENSHOTS / name, lambda path: Path(path).write_bytes(picture))

    @contextlib.contextmanager
    def screenshot_on_failure(self, name: str):
        """On any failure inside, save the page as ``FAILED_<name>`` before the error propagates; on success, remove
        such a screenshot left by an earlier run."""
        try:
            yield
        except BaseException:
            self.screenshot(f"FAILED_{name}")
            raise
        (SCREENSHOTS / f"FAILED_{name}").unlink(missing_ok=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the servers refuse to move to another one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def jupyter_environment(folder: Path) -> dict[str, str]:
    """The environment for a server whose Jupyter config, data and runtime files live in ``folder`` (so neither
    the user's settings nor an earlier run change what the tests see), with the explorer's Voila template and
    settings (``apps/jupyter``), as ``make explorer`` has."""
    env = dict(os.environ)
    for name in ("config", "data", "runtime"):
        (folder / name).mkdir(parents=True, exist_ok=True)
        env[f"JUPYTER_{name.upper()}_DIR"] = str(folder / name)
    env["JUPYTER_PATH"] = str(REPO / "apps" / "jupyter")
    env["JUPYTER_CONFIG_PATH"] = str(REPO / "apps" / "jupyter" / "config")  # the explorer's Voila settings
    env["PYTHONUNBUFFERED"] = "1"
    # one torch thread per kernel: on a CPU shared with other jobs (CI) two threads that wait for each other make
    # every redraw about ten times slower
    env["OMP_NUM_THREADS"] = "1"
    return env


def status(url: str) -> int:
    """The HTTP status of a GET of ``url``, redirects not followed (a redirect to the login page is a 302)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    try:
        with urllib.request.build_opener(NoRedirect).open(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@dataclass
class Server:
    """A server process started with :meth:`start`; :attr:`url` is its address with the token."""

    name: str
    command: list[str]
    port: int
    token: str
    log: Path
    env: dict[str, str]
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str = "/") -> str:
        return f"{self.base}{path}{'&' if '?' in path else '?'}token={self.token}"

    def start(self, ready_url: str, cwd: Path = REPO) -> Server:
        """Start the server and wait until ``ready_url`` answers 200."""
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(self.command, cwd=cwd, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if status(ready_url) == 200:
                    return self
            except OSError:  # not listening yet
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer within {STARTUP_SECONDS} s:\n{self.log_tail()}")

    def log_tail(self, characters: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-characters:]

    def stop(self) -> None:
        """Terminate the server's process group and its kernels; kill whatever has not exited in time."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            descendants = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        os.killpg(self.process.pid, signal.SIGTERM)  # the server shuts its kernels down gracefully
        try:
            self.process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(STOP_SECONDS)
        _, alive = psutil.wait_procs(descendants, timeout=STOP_SECONDS)
        for process in alive:
            process.kill()


def jupyter_lab(folder: Path, root: Path) -> Server:
    """JupyterLab serving ``root``, with its settings and workspaces under ``folder`` (news and update checks
    off, the extension manager read-only: nothing is fetched from outside)."""
    settings = folder / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
    port, token = free_port(), secrets.token_hex(24)
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
               f"--port={port}", "--ServerApp.port_retries=0", f"--ServerApp.token={token}",
               f"--ServerApp.root_dir={root}", f"--LabApp.user_settings_dir={folder / 'lab-settings'}",
               f"--LabApp.workspaces_dir={folder / 'lab-workspaces'}", "--LabApp.extension_manager=readonly"]
    return Server("JupyterLab", command, port, token, folder / "jupyterlab.log", jupyter_environment(folder))


def voila(folder: Path, notebook: Path) -> Server:
    """Voila serving ``notebook`` with the explorer's offline template, as ``make explorer`` does."""
    port, token = free_port(), secrets.token_hex(24)
    command = [sys.executable, "-m", "voila", str(notebook), "--no-browser", "--Voila.ip=127.0.0.1",
               f"--port={port}", "--Voila.port_retries=0", f"--token={token}", "--template=offline-lab"]
    return Server("Voila", command, port, token, folder / "voila.log", jupyter_environment(folder))
