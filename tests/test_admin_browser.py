"""The admin in a real browser: a staff user logs in through the form, sees the dashboard, and stops a
running run with the runs admin's "stop" action.

Playwright drives Debian's Chromium (``/usr/bin/chromium``); no browser is ever downloaded. In CI
(``CI=true``) a missing Chromium fails this test (``.ci/run`` installs it); elsewhere it is skipped.
"""

import os
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission

from runs.models import Run, RunStatus
from tests import factories

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
GPU8 = "type: fleet\nname: gpu8\nnodes: 1\nbackends: [sim]\nresources:\n  gpu: H100:8\nblocks: 8\n"
TRAIN = "type: task\nname: train\ncommands: [train]\nresources: {gpu: 2}\nfleets: [gpu8]\n"
PASSWORD = "a-long-staff-password"


def _browser_or_skip():
    """Playwright's sync API, or a skip (a failure in CI) saying what is missing."""
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "the playwright package is not installed (requirements-dev.txt)"
    if missing is None and not CHROMIUM.exists():
        missing = f"{CHROMIUM} is missing: apt-get install -y --no-install-recommends chromium"
    if missing is None:
        return sync_playwright
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run the browser test: {missing}", pytrace=False)
    pytest.skip(missing)


@pytest.fixture
def staff(transactional_db):
    """A staff user who may view and operate runs (not a superuser)."""
    user = factories.UserFactory(username="operator", is_staff=True)
    user.set_password(PASSWORD)
    user.save()
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="runs",
                                                         codename__in=["view_run", "change_run", "view_job"]))
    return user


def test_staff_log_in_see_the_dashboard_and_stop_a_run(live_server, staff, sim_backend, apply, reconcile,
                                                       monkeypatch):
    sync_playwright = _browser_or_skip()
    # Playwright's sync API runs an event loop in this thread; the test's own queries are still synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    apply(GPU8)
    apply(TRAIN)
    reconcile()
    run = Run.objects.get(name="train")
    assert run.status == RunStatus.RUNNING

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            page.goto(f"{live_server.url}/admin/")
            assert "/admin/login/" in page.url  # not logged in: the login form
            page.fill("#id_username", staff.username)
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_selector("#stackyard-dashboard")

            fleet = page.locator('tr[data-fleet="main/gpu8"]')
            assert " ".join(fleet.inner_text().split()) == "main/gpu8 2 busy / 6 idle"
            bar = fleet.locator(".sy-busy")
            assert bar.is_visible() and bar.bounding_box()["width"] > 0  # a quarter of the bar, drawn
            assert page.locator('tr[data-status="running"] .sy-count').inner_text() == "1"
            assert page.locator("#sy-events tbody tr").count() >= 1
            assert page.locator("#content-main").is_visible()  # Django's app list, below

            page.goto(f"{live_server.url}/admin/runs/run/")
            page.check(f'input[name="_selected_action"][value="{run.pk}"]')
            page.select_option('select[name="action"]', "stop")
            page.click('button[name="index"]')
            message = page.locator("ul.messagelist li").first.inner_text()
            assert message.lower().startswith("train: now terminat"), message  # the admin capitalizes it
        finally:
            browser.close()

    run.refresh_from_db()
    assert run.status in (RunStatus.TERMINATING, RunStatus.TERMINATED)
    assert run.termination_reason == "stopped_by_user"
