"""End to end in headless Chromium: what a user sees in ``python -m hpo.dashboard`` for a searched study.

Needs Debian's ``chromium`` (``bash .ci/browser-setup``) and the ``playwright`` Python package (its own browser
download is not used). Skipped when either is missing, unless ``HPO_REQUIRE_BROWSER=1`` (CI), which fails instead.
Screenshots go to ``$HPO_TEST_ARTIFACTS/browser/`` (default ``reports/test-artifacts/browser/``).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import optuna
import pytest

from hpo.notes import artifact_store_for, set_retrain_section, write_study_note
from tests.conftest import REPO
from tests.dashutil import replay_with_artifacts, serve
from tests.searchutil import TINY, run_search

CHROMIUM = os.environ.get("HPO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
RETRAIN = "best config retrained 3 times: **test accuracy 0.2150** (95% CI 0.1900-0.2400)"
TIMEOUT_MS = 20_000
VIEWPORT = {"width": 1400, "height": 900}
TALL = {"width": 1400, "height": 1700}


def _browser_or_skip():
    missing = []
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        missing.append(f"no Chromium at {CHROMIUM} (bash .ci/browser-setup installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("the playwright package is not installed (pip install playwright)")
    if missing:
        reason = "browser test: " + "; ".join(missing)
        if os.environ.get("HPO_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " (HPO_REQUIRE_BROWSER=1)")
        pytest.skip(reason)
    return sync_playwright


@pytest.fixture
def sync_playwright():
    return _browser_or_skip()


@pytest.fixture
def shots(sync_playwright) -> Path:
    root = Path(os.environ.get("HPO_TEST_ARTIFACTS") or REPO / "reports" / "test-artifacts") / "browser"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    return root


def test_dashboard_in_chromium(sync_playwright, tiny_data_dir, tmp_path, shots):
    # A small real study: 3 searched trials, plus one trial replayed with artifacts (as the objective uploads
    # them) and the study note with a retrain section.
    db = tmp_path / "studies" / "cifar10.db"
    url = f"sqlite:///{db}"
    args = ["--storage", url, "--data-dir", str(tiny_data_dir), "--epochs", "2", "--n-trials", "3", *TINY]
    done = run_search(*args)
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="cifar10", storage=url)
    write_study_note(study, study.user_attrs["hpo_settings"], "CIFAR-10 format test data: 90 train images", 4)
    set_retrain_section(study, RETRAIN)
    source = max(study.trials, key=lambda t: t.user_attrs["epochs_run"])
    replayed, _ = replay_with_artifacts(study, source, artifact_store_for("cifar10", db.parent))
    best = study.best_trial

    errors: list[str] = []
    with serve("--storage", url, logs=tmp_path / "dash") as dash, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda err: errors.append(f"page error: {err}"))
        page.on("response", lambda r: r.status >= 400 and errors.append(f"HTTP {r.status} {r.url}"))
        studies = f"{dash.base}/dashboard/studies/{dash.study_id}"
        try:
            # The study list shows the study.
            page.goto(f"{dash.base}/dashboard")
            page.get_by_text(f"{dash.study_id}. cifar10", exact=True).wait_for()
            page.get_by_text("Direction: MAXIMIZE").first.wait_for()
            page.screenshot(path=shots / "1-study-list.png")

            # The study's page: the best trial and its value.
            page.goto(studies)
            page.get_by_text(f"Best Trial (number={best.number})").wait_for()
            page.get_by_text(repr(best.value), exact=True).first.wait_for()
            page.get_by_text("Intermediate values").wait_for()
            page.wait_for_timeout(1000)  # let the plots draw for the screenshot
            page.screenshot(path=shots / "2-study-history.png", full_page=True)

            # The trial list: all 4 trials; the replayed trial's learning curve shows among its artifacts.
            page.goto(f"{studies}/trials")
            page.get_by_text("4 Trials").wait_for()
            for number in range(4):
                page.get_by_text(f"Trial {number}", exact=True).first.wait_for()
            page.get_by_text(f"Trial {replayed.number}", exact=True).first.click()
            page.get_by_text(f"Trial {replayed.number} (trial_id={replayed._trial_id})").wait_for()
            image = page.locator("img[src*='/artifacts/']").first
            image.wait_for()
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
            page.set_viewport_size(TALL)  # the trial and note views scroll inside the page: show all of it
            page.screenshot(path=shots / "3-trial-with-artifacts.png")

            # The note, rendered from Markdown (headings and tables, not raw '#' and '|').
            page.goto(f"{studies}/note")
            page.get_by_role("heading", name=re.compile("Study cifar10")).wait_for()
            page.get_by_role("heading", name="Search space").wait_for()
            page.locator("table td", has_text="lr_decoupled").first.wait_for()
            page.get_by_text("test accuracy 0.2150").wait_for()
            body = page.inner_text("body")
            assert "## Search space" not in body and "| --- |" not in body
            page.screenshot(path=shots / "4-note.png")
        finally:
            page.screenshot(path=shots / "last-page.png", full_page=True)
            browser.close()
    assert not errors, errors
    assert "Traceback" not in dash.output(), dash.output()
    print(f"screenshots in {shots}")
