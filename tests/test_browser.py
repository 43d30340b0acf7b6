"""What a user sees: the α explorer in JupyterLab, driven in a real Chromium.

The test starts JupyterLab headless on 127.0.0.1 with a three-cell notebook (build the explorer, show it,
print its state), runs it from JupyterLab's Run menu, then moves the α slider, switches the mode and clicks a
patch. After each action the explorer's state in the kernel must come to say what was done, and the drawn
figure must change; no cell may show an error. No verdict depends on time: every wait ends when what it waits
for happens, and only a hang reaches its limit (``PATIENCE_MS``).

It needs Debian's Chromium and Playwright (``apt-get install chromium`` and ``pip install -e ".[dev]"``);
``.ci/run`` installs both. Elsewhere it is skipped with that reason.
"""
import ast
import itertools
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
    "from deop_lite.stages import load_proposals\n"
    "from deop_lite.toyworld import CLASS_NAMES, ToyWorld\n"
    "from deop_lite.viz import AlphaExplorer\n"
    "world = ToyWorld().validation_set(2)\n"
    "images = torch.stack([world[i]['image_raw'] for i in range(2)])\n"
    "explorer = AlphaExplorer(load_clip('toy'), images, CLASS_NAMES, proxy=load_proposals()[0].pixel_features(images))",
    "explorer.widget()",
    "print({k: round(v, 2) if isinstance(v, float) else v for k, v in explorer.state.items()})",
]
PATIENCE_MS = 300_000
"""How long any wait may take. No verdict depends on time: only a hang (a kernel that never answers, a figure
that never redraws) reaches it, however loaded the machine is."""


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
        deadline = time.perf_counter() + PATIENCE_MS / 1000
        while server.poll() is None and time.perf_counter() < deadline:
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
        page.set_default_timeout(PATIENCE_MS)
        try:
            timings, states, errors = drive_the_explorer(page, jupyterlab)
        except Exception:
            page.screenshot(path=tmp_path / "failure.png", full_page=True)
            (tmp_path / "failure.html").write_text(page.content())
            print(f"what the browser showed: {tmp_path / 'failure.png'}")
            raise
        finally:
            browser.close()
    print("browser test timings (s, cumulative):", {k: round(v, 1) for k, v in timings.items()})
    assert not [e for e in errors if "Error" in e or "Traceback" in e], errors
    start, after_alpha, after_blocks, after_mode, after_click = states
    assert (start["mode"], start["alpha"], start["blocks"], start["row"], start["col"]) == ("GPS", 1.0, 1, 8, 8), start
    assert after_alpha["alpha"] == 0.7 and after_alpha["mode"] == "GPS", after_alpha
    assert after_blocks["blocks"] == 3 and after_blocks["alpha"] == 0.7, after_blocks
    assert after_mode["mode"] == "ProxyCLIP" and after_mode["blocks"] == 3, after_mode
    assert after_click["col"] < 8 and after_click["mode"] == "ProxyCLIP", after_click  # a click left of the centre


def drive_the_explorer(page, url: str) -> tuple[dict, list[dict], list[str]]:
    """Open, run, act; returns the timings, the explorer's state in the kernel at the start and after each action,
    and the texts of error outputs. The figure must change after each action."""
    timings, tic = {}, time.perf_counter()
    page.goto(url)
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    select_kernel = page.locator(".jp-Dialog button:has-text('Select')")
    kernel_idle = page.get_by_text("(ipykernel) | Idle")  # the status bar, once the kernel has started
    deadline = time.perf_counter() + PATIENCE_MS / 1000
    while not kernel_idle.is_visible() and time.perf_counter() < deadline:
        if select_kernel.is_visible():  # JupyterLab may ask which kernel to start: take the preselected Python 3
            select_kernel.click()
        page.wait_for_timeout(200)
    timings["open JupyterLab"] = time.perf_counter() - tic
    page.click("li.lm-MenuBar-item:has-text('Run')")
    page.click("li.lm-Menu-item:has-text('Run All Cells')")
    cells = page.locator(".jp-Notebook .jp-CodeCell")
    figure = cells.nth(1).locator(".jupyter-matplotlib-canvas-div")  # ipympl's live canvas
    runs = itertools.count(3)  # execution counts of the state cell: 3 after Run All, then 4, 5, ...

    def kernel_state(reached=lambda state: True) -> dict:
        """The explorer's state in the kernel, printed by the third cell, re-run until ``reached(state)``: the
        browser sends a slider's moves to the kernel throttled, so the last one may arrive after a cell run."""
        deadline = time.perf_counter() + PATIENCE_MS / 1000
        while True:
            count = next(runs)
            if count > 3:
                cells.nth(2).click()
                page.keyboard.press("Control+Enter")
            page.wait_for_function("n => document.querySelectorAll('.jp-Notebook .jp-InputPrompt')[2]"
                                   ".textContent.includes(`[${n}]`)", arg=count)
            state = ast.literal_eval(cells.nth(2).locator(".jp-OutputArea-output").inner_text().strip())
            if reached(state) or time.perf_counter() > deadline:
                return state

    def canvas_url() -> str:
        return figure.evaluate("el => el.querySelector('canvas').toDataURL()")

    def redrawn(action: str, before: str) -> str:
        """The canvas once it differs from ``before`` (the frontend fetches the kernel's redraw asynchronously)."""
        try:
            page.wait_for_function("([el, before]) => el.querySelector('canvas').toDataURL() !== before",
                                   arg=[figure.element_handle(), before])
        except playwright.TimeoutError:
            raise AssertionError(f"the figure did not change after '{action}'") from None
        return canvas_url()

    states = [kernel_state()]
    timings["run the notebook"] = time.perf_counter() - tic
    assert cells.nth(0).locator(".jp-OutputArea-output").count() == 0  # building the explorer drew nothing
    blank = figure.evaluate("el => { const c = el.querySelector('canvas'), b = document.createElement('canvas');"
                            " b.width = c.width; b.height = c.height; return b.toDataURL(); }")
    picture = redrawn("run the notebook", blank)  # the first drawing has arrived
    handle = cells.nth(1).locator(".widget-slider:has-text('α') .noUi-handle").last
    handle.focus()
    for _ in range(6):  # six keyboard steps of 0.05: α 1.0 -> 0.7
        handle.press("ArrowLeft")
    states.append(kernel_state(lambda state: state["alpha"] == 0.7))
    picture = redrawn("move α", picture)
    dial = cells.nth(1).locator(".widget-slider:has-text('severed blocks') .noUi-handle")
    dial.focus()
    for _ in range(2):  # the dial: the mode replaces the last 3 blocks instead of 1
        dial.press("ArrowRight")
    states.append(kernel_state(lambda state: state["blocks"] == 3))
    picture = redrawn("turn the dial", picture)
    cells.nth(1).locator("button:has-text('ProxyCLIP')").click()  # a successor of 2024: attention from the proxy
    states.append(kernel_state(lambda state: state["mode"] == "ProxyCLIP"))
    # α does not apply to ProxyCLIP: its slider is disabled (the dial is not)
    cells.nth(1).locator(".widget-slider:not(:has-text('severed')):has-text('α') .noUi-target[disabled]").wait_for(
        state="attached")
    picture = redrawn("switch the mode", picture)
    box = figure.bounding_box()
    figure.click(position={"x": box["width"] * 0.1, "y": box["height"] * 0.35})  # a patch near the image's left edge
    states.append(kernel_state(lambda state: state["col"] != 8))
    redrawn("click a patch", picture)
    timings["slider, mode and click"] = time.perf_counter() - tic
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
    return timings, states, errors
