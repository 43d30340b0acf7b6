"""What a user sees: the α explorer in JupyterLab, driven in a real Chromium.

The test starts JupyterLab headless on 127.0.0.1 with a three-cell notebook (build the explorer, show it,
print its state), runs it from JupyterLab's Run menu, then moves the α slider, switches the mode and clicks a
patch, and checks after each action that the drawn figure changed; at the end the explorer's state in the
kernel must say what was done, and no cell may show an error.

It needs Debian's Chromium and Playwright (``apt-get install chromium`` and ``pip install -e ".[dev]"``);
``.ci/run`` installs both. Elsewhere it is skipped with that reason.
"""
import ast
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is missing: pip install -e '.[dev]'")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install chromium (Debian's package), "
                                                         "as .ci/run does, to run the browser test")

CELLS = [
    "%matplotlib widget\n"
    "import torch\n"
    "from deop_lite.clip import load_clip\n"
    "from deop_lite.toyworld import CLASS_NAMES, ToyWorld, ToyWorldConfig\n"
    "from deop_lite.viz import AlphaExplorer\n"
    "world = ToyWorld('val', 2, ToyWorldConfig.segmentation())\n"
    "explorer = AlphaExplorer(load_clip('toy'), torch.stack([world[i]['image_raw'] for i in range(2)]), CLASS_NAMES)",
    "explorer.widget()",
    "print({k: round(v, 2) if isinstance(v, float) else v for k, v in explorer.state.items()})",
]
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync"]  # this machine has no network beyond loopback


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on 127.0.0.1 serving the explorer notebook; yields its URL."""
    notebook = {"nbformat": 4, "nbformat_minor": 5, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                                "language": "python"}},
                "cells": [{"cell_type": "code", "id": f"cell{i}", "metadata": {}, "execution_count": None, "outputs": [],
                           "source": source} for i, source in enumerate(CELLS)]}
    (tmp_path / "explorer.ipynb").write_text(json.dumps(notebook))
    port, token = free_port(), "deop-lite-browser-test"
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    env.pop("MPLBACKEND", None)  # the notebook chooses its backend itself
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}", "--allow-root", "--LabApp.news_url=",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            if server.poll() is not None:
                break
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"JupyterLab did not start; its log:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
        yield f"{url}/lab/tree/explorer.ipynb?token={token}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_alpha_explorer_in_jupyterlab(jupyterlab, tmp_path):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            timings, state, errors = drive_the_explorer(page, jupyterlab)
        except Exception:
            page.screenshot(path=tmp_path / "failure.png", full_page=True)
            (tmp_path / "failure.html").write_text(page.content())
            print(f"what the browser showed: {tmp_path / 'failure.png'}")
            raise
        finally:
            browser.close()
    print("browser test timings (s, cumulative):", {k: round(v, 1) for k, v in timings.items()})
    assert not [e for e in errors if "Error" in e or "Traceback" in e], errors
    state = ast.literal_eval(state.strip())
    assert state["mode"] == "NACLIP" and state["alpha_last"] == 0.7, state
    assert state["col"] < 8, state  # the click on the image's left part moved the patch from the centre (8, 8)


def drive_the_explorer(page, url: str) -> tuple[dict, str, list[str]]:
    """Open, run, act; returns the timings, the printed explorer state and the texts of error outputs."""
    timings, tic = {}, time.perf_counter()
    page.goto(url)
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    select_kernel = page.locator(".jp-Dialog button:has-text('Select')")
    try:  # JupyterLab may ask which kernel to start; the notebook's own (Python 3) is preselected
        select_kernel.click(timeout=5_000)
    except playwright.Error:
        pass
    timings["open JupyterLab and start the kernel"] = time.perf_counter() - tic
    page.click("li.lm-MenuBar-item:has-text('Run')")
    page.click("li.lm-Menu-item:has-text('Run All Cells')")
    cells = page.locator(".jp-Notebook .jp-CodeCell")
    figure = cells.nth(1).locator(".jupyter-matplotlib-canvas-div")  # ipympl's live canvas
    figure.wait_for()
    page.wait_for_function("() => document.querySelectorAll('.jp-Notebook .jp-InputPrompt')[2]"
                           ".textContent.includes('3')")  # every cell has run
    timings["run the notebook"] = time.perf_counter() - tic

    def picture_after(action: str, before: bytes) -> bytes:
        """The canvas once it has changed from ``before`` and stopped changing (the kernel redraws asynchronously)."""
        deadline, picture = time.perf_counter() + 30, figure.screenshot()
        while picture == before:
            assert time.perf_counter() < deadline, f"the figure did not change after '{action}'"
            page.wait_for_timeout(200)
            picture = figure.screenshot()
        while (again := figure.screenshot()) != picture:
            page.wait_for_timeout(200)
            picture = again
        return picture

    assert cells.nth(0).locator(".jp-OutputArea-output").count() == 0  # building the explorer drew nothing
    page.wait_for_timeout(1000)
    picture = figure.screenshot()
    handle = cells.nth(1).locator(".widget-slider:has-text('α last') .noUi-handle")
    handle.focus()
    for _ in range(6):  # six keyboard steps of 0.05: α 1.0 -> 0.7
        handle.press("ArrowLeft")
    picture = picture_after("move α", picture)
    cells.nth(1).locator("button:has-text('NACLIP')").click()
    for slider in ("α last", "α 2nd-last"):  # α does not apply to NACLIP: its sliders are disabled
        cells.nth(1).locator(f".widget-slider:has-text('{slider}') .noUi-target[disabled]").wait_for(timeout=20_000)
    picture = picture_after("switch the mode", picture)
    box = figure.bounding_box()
    figure.click(position={"x": box["width"] * 0.1, "y": box["height"] * 0.35})  # a patch near the image's left edge
    picture_after("click a patch", picture)
    timings["slider, mode and click"] = time.perf_counter() - tic
    cells.nth(2).click()
    page.keyboard.press("Shift+Enter")
    page.wait_for_function("() => document.querySelectorAll('.jp-Notebook .jp-InputPrompt')[2]"
                           ".textContent.includes('4')")
    state = cells.nth(2).locator(".jp-OutputArea-output").inner_text()
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
    return timings, state, errors
