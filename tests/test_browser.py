"""The labeler in a real browser: JupyterLab on loopback, driven by Playwright with Debian's Chromium.

Opens notebook 02, runs it, clicks A, B, Tie, Undo, Skip with a typed rationale, checks the JSONL the
kernel wrote, restarts the kernel, runs it again and checks the labeler resumes at the right item.
Skips, printing why, only where Chromium is missing (`make test` installs it with apt-get as root).
"""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[1]
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        reason = "Chromium is not installed (apt-get install chromium); browser test skipped"
        print(reason)
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    artifacts = root / "artifacts"
    port = _free_port()
    env = {**os.environ, "RLHF_EDU_PRESET": "smoke", "RLHF_EDU_ARTIFACTS": str(artifacts)}
    env.pop("RLHF_EDU_AUTOPILOT", None)  # a person labels here
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--allow-root",
            f"--port={port}",
            "--ServerApp.ip=127.0.0.1",
            "--IdentityProvider.token=",
            "--ServerApp.password=",
            "--ServerApp.disable_check_xsrf=True",
            "--LabApp.expose_app_in_browser=True",
            f"--ServerApp.root_dir={root}",
            f"--LabApp.workspaces_dir={root / 'workspaces'}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not start")
        yield url, artifacts
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_idle(page, timeout_s=240):
    page.wait_for_function(
        "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
        " const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
        " return k && k.status === 'idle'; }",
        timeout=timeout_s * 1000,
    )


def _run_all_and_wait_for_labeler(page):
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    button = page.locator(f"{PANEL} .pref-btn-A")
    button.wait_for(state="attached", timeout=240_000)  # run-all scrolls to the end of the notebook
    _wait_idle(page)
    button.scroll_into_view_if_needed()


def test_label_in_the_browser_then_resume_after_restart(lab):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright

    url, artifacts = lab
    labels = artifacts / "labels" / "you.jsonl"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        page.goto(f"{url}/lab/tree/notebooks/02_label_preferences.ipynb?reset")
        _wait_idle(page, 120)
        _run_all_and_wait_for_labeler(page)
        progress = page.locator(f"{PANEL} .pref-progress")
        expect(progress).to_contain_text("0 / 5")
        page.locator(f"{PANEL} .pref-rationale textarea").fill("shorter and on topic")
        page.locator(f"{PANEL} .pref-rationale textarea").blur()  # sync the value to the kernel
        for key, expected in [("A", "1 / 5"), ("B", "2 / 5"), ("tie", "3 / 5"), ("undo", "2 / 5"), ("skip", "3 / 5")]:
            page.locator(f"{PANEL} .pref-btn-{key}").click()
            expect(progress).to_contain_text(expected)
            time.sleep(0.4)  # longer than the double-click guard
        events = [json.loads(line) for line in labels.read_text().splitlines()]
        assert [e["event"] for e in events] == ["label", "label", "label", "undo", "skip"]
        assert [e.get("choice") for e in events] == ["A", "B", "tie", None, None]
        assert events[0]["rationale"] == "shorter and on topic" and events[1]["rationale"] == ""
        assert [e["item"] for e in events] == [0, 1, 2, 2, 2]

        # A new kernel, the same file: the labeler resumes at item 3 of 5.
        # Not awaited: the command's promise resolves only once the confirmation dialog is answered.
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:restart-kernel'); }")
        accept = page.locator(".jp-Dialog .jp-mod-accept")
        with contextlib.suppress(PlaywrightTimeout):  # no confirmation dialog in some versions
            accept.wait_for(state="visible", timeout=5_000)
            accept.click()
        _wait_idle(page, 120)
        _run_all_and_wait_for_labeler(page)
        expect(page.locator(f"{PANEL} .pref-progress")).to_contain_text("3 / 5")
        page.screenshot(path=str(artifacts / "labeler.png"))
        browser.close()
    assert len(labels.read_text().splitlines()) == 5  # the restart added nothing
