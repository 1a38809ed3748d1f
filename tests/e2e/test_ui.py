"""The web UI in a real browser: Debian's Chromium, headless, driven by Playwright.

A flowgate of its own (two tenants and an admin key) serves the pages; runs are made through
the official OpenAI SDK; the tests do what a user does and look at what the page shows. Each
test leaves a screenshot in tests/e2e/screenshots/ (CI keeps that folder).
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
from openai import OpenAI
from playwright.sync_api import expect, sync_playwright

from conftest import API_KEY, _binary, _start, _stop, flowgate_config

ACME_KEY = "acme-ui-key"
ADMIN_KEY = "admin-ui-key"
ADMIN_LABEL = "ui-ops"
AGENT = "ui-shop"
SCREENSHOTS = Path(__file__).parent / "screenshots"
TIMEOUT_MS = 15_000


def chromium_path() -> str:
    """Debian's Chromium (Playwright's own browser downloads are not used). Missing, the
    tests fail: `tests/run.sh` installs it."""
    path = os.environ.get("CHROMIUM_BIN") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        pytest.fail(f"no Chromium at {path}: install it (apt-get install chromium) or set CHROMIUM_BIN")
    return path


@dataclass
class UiGateway:
    url: str
    proc: object


@pytest.fixture(scope="module")
def ui(tmp_path_factory, mock_upstream) -> UiGateway:
    binary = _binary("FLOWGATE_BIN")
    tmp = tmp_path_factory.mktemp("flowgate-ui")
    config = flowgate_config(tmp / "data", mock_upstream.base_url) + f"""
[auth.tenants.acme]
api_keys = ["{ACME_KEY}"]

[admin]
api_keys = [{{ key = "{ADMIN_KEY}", label = "{ADMIN_LABEL}" }}]
"""
    path = tmp / "flowgate.toml"
    path.write_text(config)
    proc = _start([binary, "serve", "--config", str(path)], tmp / "stderr.log", "flowgate (ui)")
    yield UiGateway(proc.url, proc)
    _stop(proc)


@pytest.fixture(scope="module")
def browser():

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def context(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(TIMEOUT_MS)
    yield ctx
    ctx.close()


@pytest.fixture
def shot(request):
    SCREENSHOTS.mkdir(exist_ok=True)

    def take(page, suffix: str = "") -> None:
        name = request.node.name + (f"-{suffix}" if suffix else "")
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

    return take


def no_dialogs(page) -> list[str]:
    """Any `alert()` a page manages to run is recorded (and dismissed)."""
    seen: list[str] = []

    def on_dialog(dialog):
        seen.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    return seen


def sign_in(context, ui: UiGateway, key: str, tenant: str = ""):
    page = context.new_page()
    page.goto(f"{ui.url}/signin")
    page.fill('input[name="key"]', key)
    if tenant:
        page.fill('input[name="tenant"]', tenant)
    page.click('form button[type="submit"]')
    page.wait_for_url(f"{ui.url}/agents")
    return page


@dataclass
class Runs:
    word: str
    echo_ids: list[str]
    up_id: str
    script_id: str


@pytest.fixture(scope="module")
def runs(ui) -> Runs:
    """Runs of the default tenant's agent, made through the OpenAI SDK: two on the built-in
    mock, one on the mock upstream (`up-model`), one whose output is a script tag."""
    client = OpenAI(base_url=f"{ui.url}/v1", api_key=API_KEY, max_retries=0, timeout=30)
    word = f"zebra{uuid.uuid4().hex[:8]}"

    def run(model: str, text: str) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model=f"{AGENT}/{model}", messages=[{"role": "user", "content": text}]
        )
        return raw.headers["x-flowgate-run-id"]

    echo_ids = [run("mock-echo", f"the {word} crossed the road"), run("mock-echo", "an ordinary request")]
    up_id = run("up-model", "a request for the upstream")
    script_id = run("mock-echo", "<script>alert(1)</script>")
    client.close()
    return Runs(word, echo_ids, up_id, script_id)


def add_chip(page, field: str, operator: str, value: str) -> None:
    page.select_option("#chip-field", field)
    page.select_option("#chip-operator", operator)
    page.fill("#chip-value", value)
    page.click('#add-chip button[type="submit"]')
    page.wait_for_load_state()


# ---------------------------------------------------------------------------------------------


def test_pages_need_a_sign_in_and_a_wrong_key_is_refused(context, ui, shot):
    page = context.new_page()
    response = page.goto(f"{ui.url}/runs")
    assert re.search(r"/signin\?next=%2Fruns$", page.url), page.url
    assert response.status == 200
    page.fill('input[name="key"]', "not-a-key")
    page.click('form button[type="submit"]')
    # The refusal comes with the answer to the form: waited for (under load the page that was
    # there still shows when `click` returns), then read.
    page.locator("main").get_by_text("not a flowgate API key").wait_for(timeout=15000)
    assert "not a flowgate API key" in page.inner_text("main")
    shot(page)
    # The JSON API from a page without a session: no key, no data.
    status = page.evaluate("fetch('/api/runs/search/fields').then(r => r.status)")
    assert status == 401


def test_keyboard_sign_in_sets_a_strict_http_only_cookie_and_sign_out_ends_it(context, ui, shot):
    page = context.new_page()
    page.goto(f"{ui.url}/signin?next=/providers")
    # The key field takes the focus by itself (autofocus, applied once the page has rendered:
    # waited for, not assumed, on a loaded machine): type and press Enter, no mouse.
    page.wait_for_function("document.activeElement && document.activeElement.name === 'key'")
    page.keyboard.type(API_KEY)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{ui.url}/providers")
    cookie = next(c for c in context.cookies() if c["name"] == "flowgate_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""
    assert "upstream" in page.inner_text("#providers")
    shot(page)
    page.click("text=Sign out")
    page.wait_for_url(re.compile(r".*/signin$"))
    page.goto(f"{ui.url}/agents")
    assert "/signin" in page.url


def test_find_a_run_by_a_word_of_its_output_and_by_model_then_open_it(context, ui, runs, shot):
    page = sign_in(context, ui, API_KEY)
    page.click("text=Agents")
    page.click(f"a:text-is('{AGENT}')")
    page.wait_for_url(f"{ui.url}/agents/{AGENT}/runs")
    assert page.locator("#runs tbody tr").count() == 4

    add_chip(page, "text", "contains", runs.word)
    # The search is in the URL: a bookmark.
    assert f"text|contains|{runs.word}" in unquote(page.url)
    rows = page.locator("#runs tbody tr")
    assert rows.count() == 1
    assert runs.word in rows.first.inner_text()
    shot(page, "word")

    # The URL alone gives the same page.
    page.goto(page.url)
    assert page.locator("#runs tbody tr").count() == 1

    page.click("text=Clear all")
    add_chip(page, "model", "is", "up-model")
    rows = page.locator("#runs tbody tr")
    assert rows.count() == 1
    assert "up-model" in rows.first.inner_text()
    shot(page, "model")

    rows.first.locator("a").first.click()
    page.wait_for_url(f"{ui.url}/runs/{runs.up_id}")
    assert page.inner_text("#run-model") == "up-model"
    assert "a request for the upstream" in page.inner_text(".output-text")
    # The attempt to the upstream provider is listed.
    assert "upstream" in page.inner_text("main table")
    shot(page, "detail")


def test_a_script_in_an_output_shows_as_text(context, ui, runs, shot):
    page = sign_in(context, ui, API_KEY)
    dialogs = no_dialogs(page)
    response = page.goto(f"{ui.url}/runs/{runs.script_id}")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.inner_text(".output-text") == "<script>alert(1)</script>"
    page.goto(f"{ui.url}/agents/{AGENT}/runs")
    assert "<script>alert(1)</script>" in page.inner_text("#runs")
    assert dialogs == []
    shot(page)


def test_share_a_run_open_the_link_without_a_session_then_revoke_it(browser, context, ui, runs, shot):
    page = sign_in(context, ui, API_KEY)
    page.goto(f"{ui.url}/runs/{runs.echo_ids[0]}")
    page.click("#share")
    # (Waits are selectors and `expect`: the pages' CSP forbids the eval that
    # `wait_for_function` strings need.)
    expect(page.locator("#share-url")).to_have_value(re.compile(r"/share/"))
    link = page.input_value("#share-url")
    shot(page, "shared")

    stranger = browser.new_context()
    try:
        assert stranger.cookies() == []
        other = stranger.new_page()
        response = other.goto(link)
        assert response.status == 200
        assert runs.word in other.inner_text("body")
        # Read-only: no tenant, no actions.
        assert other.locator("#share, #replay, form").count() == 0
        shot(other, "link")

        page.click("#revoke")
        page.wait_for_selector("#share-box.hidden", state="attached")
        response = other.goto(link)
        assert response.status == 404
        shot(other, "revoked")
    finally:
        stranger.close()


def test_try_a_run_in_the_playground_on_two_models(context, ui, runs, shot):
    page = sign_in(context, ui, API_KEY)
    page.goto(f"{ui.url}/runs/{runs.echo_ids[0]}")
    page.click("#try-playground")
    page.wait_for_url(re.compile(r".*/playground\?run="))
    # Prefilled from the run: its message and its model.
    assert runs.word in page.locator('textarea[name="content"]').first.input_value()
    models = page.locator('input[name="model"]')
    assert models.nth(0).input_value() == "mock-echo"
    models.nth(1).fill("up-model")
    page.click("#run")
    page.wait_for_selector('#columns[data-done="1"]', state="attached")
    columns = page.locator("#columns .column")
    assert columns.count() == 2
    for i, model in enumerate(["mock-echo", "up-model"]):
        column = columns.nth(i)
        assert column.locator(".model-name").inner_text() == model
        assert runs.word in column.locator(".output").inner_text()
        assert re.search(r"\$[0-9.]+ · \d+ ms · \d+ in / \d+ out tokens", column.locator(".stats").inner_text())
    badges = page.inner_text("#columns")
    assert "cheapest" in badges and "fastest" in badges
    # The state is in the URL: opening it again restores the models.
    assert "%22up-model%22" in page.url or "up-model" in unquote(page.url)
    shot(page)
    page.goto(page.url)
    assert page.locator('input[name="model"]').nth(1).input_value() == "up-model"


def test_replay_a_run_on_another_model(context, ui, runs, shot):
    page = sign_in(context, ui, API_KEY)
    page.goto(f"{ui.url}/runs/{runs.echo_ids[1]}")
    page.fill("#replay-model", "up-model")
    page.click('#replay button[type="submit"]')
    page.wait_for_url(lambda url: "/runs/" in url and runs.echo_ids[1] not in url)
    assert page.inner_text("#run-model") == "up-model"
    assert f"replay of {runs.echo_ids[1]}" in page.inner_text("aside")
    assert "an ordinary request" in page.inner_text(".output-text")
    shot(page)


def test_an_admin_deploys_a_version_and_sees_it_listed(context, ui, runs, shot):
    page = sign_in(context, ui, ADMIN_KEY)
    assert ADMIN_LABEL in page.inner_text("header")
    page.goto(f"{ui.url}/agents/{AGENT}/versions")
    assert "No deployments yet" in page.inner_text("#history")
    page.select_option("#deploy-environment", "production")
    version = page.locator("#deploy-version").input_value()
    # The page reloads once the deployment is stored.
    with page.expect_navigation():
        page.click('#deploy button[type="submit"]')
    history = page.inner_text("#history")
    assert "production" in history and ADMIN_LABEL in history and version[:12] in history
    assert version[:12] in page.inner_text('.slot[data-environment="production"]')
    shot(page)

    # Another version to production, then roll back to the first.
    options = page.locator("#deploy-version option")
    other = next(v for v in (options.nth(i).get_attribute("value") for i in range(options.count())) if v != version)
    page.select_option("#deploy-version", other)
    page.select_option("#deploy-environment", "production")
    with page.expect_navigation():
        page.click('#deploy button[type="submit"]')
    slot = page.locator('.slot[data-environment="production"]')
    assert other[:12] in slot.inner_text()
    with page.expect_navigation():
        slot.locator("button.rollback").click()
    assert version[:12] in page.locator('.slot[data-environment="production"]').inner_text()
    assert page.locator("#history tbody tr").count() == 3
    shot(page, "rolled-back")

    # The diff of the two versions marks what differs: their messages.
    page.select_option('#diff-form select[name="a"]', version)
    page.select_option('#diff-form select[name="b"]', other)
    page.click('#diff-form button[type="submit"]')
    changed = page.locator("#diff tr.diff-changed th")
    assert "messages" in [changed.nth(i).inner_text().split()[0] for i in range(changed.count())]
    shot(page, "diff")


def test_a_tenant_cannot_deploy_nor_reach_another_tenants_run(browser, ui, runs, shot):
    # The default tenant's session: no deploy form, and the deploy API refuses it.
    own = browser.new_context()
    own.set_default_timeout(TIMEOUT_MS)
    acme = browser.new_context()
    acme.set_default_timeout(TIMEOUT_MS)
    try:
        page = sign_in(own, ui, API_KEY)
        page.goto(f"{ui.url}/agents/{AGENT}/versions")
        assert page.locator("#deploy").count() == 0
        version = httpx.get(
            f"{ui.url}/api/agents/{AGENT}/versions", headers={"Authorization": f"Bearer {API_KEY}"}
        ).json()["items"][0]["id"]
        csrf = page.get_attribute('meta[name="csrf-token"]', "content")
        deploy = (
            "([path, csrf]) => fetch(path, {method: 'POST', headers: {'content-type': 'application/json',"
            " 'x-flowgate-csrf': csrf}, body: JSON.stringify({environment: 'dev'})}).then(r => r.status)"
        )
        path = f"/api/agents/{AGENT}/versions/{version}/deploy"
        assert page.evaluate(deploy, [path, csrf]) == 401
        # Without the page's CSRF token a state-changing call is refused, even with the cookie.
        share = f"/api/runs/{runs.echo_ids[0]}/share"
        assert page.evaluate(
            "(path) => fetch(path, {method: 'POST', headers: {'content-type': 'application/json'}, body: '{}'})"
            ".then(r => r.status)",
            share,
        ) == 403

        # Another tenant: the run page by URL is a 404, and so are its share actions.
        other = sign_in(acme, ui, ACME_KEY)
        response = other.goto(f"{ui.url}/runs/{runs.echo_ids[0]}")
        assert response.status == 404
        assert runs.word not in other.inner_text("body")
        other_csrf = other.get_attribute('meta[name="csrf-token"]', "content")
        statuses = other.evaluate(
            "([path, csrf]) => Promise.all(['POST', 'DELETE'].map(m => fetch(path, {method: m,"
            " headers: {'content-type': 'application/json', 'x-flowgate-csrf': csrf}, body: m === 'POST' ? '{}' : undefined})"
            ".then(r => r.status)))",
            [share, other_csrf],
        )
        assert statuses == [404, 404]
        assert other.evaluate(deploy, [path, other_csrf]) == 401
        # Its own runs list does not show the other tenant's runs.
        other.goto(f"{ui.url}/runs")
        assert runs.word not in other.inner_text("main")
        shot(other)
    finally:
        own.close()
        acme.close()


def test_pages_fit_a_phone_screen(browser, ui, runs, shot):
    ctx = browser.new_context(viewport={"width": 390, "height": 844})
    ctx.set_default_timeout(TIMEOUT_MS)
    try:
        page = sign_in(ctx, ui, API_KEY)
        for path, name in [
            ("/agents", "agents"),
            (f"/agents/{AGENT}/runs", "runs"),
            (f"/runs/{runs.echo_ids[0]}", "run"),
            ("/playground", "playground"),
            (f"/agents/{AGENT}/versions", "versions"),
            ("/cost", "cost"),
            ("/providers", "providers"),
        ]:
            response = page.goto(f"{ui.url}{path}")
            assert response.status == 200, path
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"{path} is {width} px wide"
            shot(page, name)
    finally:
        ctx.close()


def test_agents_and_cost_pages_count_the_runs(context, ui, runs, shot):
    page = sign_in(context, ui, API_KEY)
    row = page.locator("tr", has_text=AGENT)
    cells = row.locator("td")
    # Four runs of the app (replays and playground runs are not the app's traffic).
    assert cells.nth(1).inner_text() == "4"
    assert row.locator("svg.spark polyline").count() == 1
    shot(page, "agents")
    page.click("text=Cost")
    assert page.inner_text("#total-runs") == "4"
    assert page.locator("svg.chart rect").count() >= 2
    # Per model over the same range, always shown: three runs on the mock, one upstream.
    for model, count in [("mock-echo", "3"), ("up-model", "1")]:
        row = page.locator("#models tr", has_text=model)
        assert row.locator("td").nth(1).inner_text() == count
        assert f"{model}: {count} runs" in page.inner_text("#model-legend")
    shot(page, "cost")


def test_without_keys_the_pages_need_no_sign_in_and_their_actions_pass_the_browser_guard(
    browser, tmp_path, mock_upstream, shot
):
    """The laptop default: no API key configured, so no sign-in on loopback; the browser guard
    (JSON posts from this origin only) still lets the pages' own actions through, and an admin
    key signs in through the JSON form post."""
    binary = _binary("FLOWGATE_BIN")
    keys = f'[auth]\napi_keys = ["{API_KEY}"]\n'
    config = flowgate_config(tmp_path / "data", mock_upstream.base_url)
    assert keys in config
    config = config.replace(keys, "") + f"""
[admin]
api_keys = [{{ key = "{ADMIN_KEY}", label = "{ADMIN_LABEL}" }}]
"""
    path = tmp_path / "flowgate.toml"
    path.write_text(config)
    proc = _start([binary, "serve", "--config", str(path)], tmp_path / "stderr.log", "flowgate (open)")
    ctx = browser.new_context()
    ctx.set_default_timeout(TIMEOUT_MS)
    try:
        answer = httpx.post(
            f"{proc.url}/v1/chat/completions",
            json={"model": "laptop/mock-echo", "messages": [{"role": "user", "content": "no keys here"}]},
            timeout=30,
        ).json()
        run_url = answer["choices"][0]["url"]
        page = ctx.new_page()
        response = page.goto(run_url)
        assert response.status == 200 and page.url == run_url
        assert "no keys here" in page.inner_text(".output-text")
        page.click("#share")
        expect(page.locator("#share-url")).to_have_value(re.compile(r"/share/"))
        shot(page)
        # A cross-site page cannot make the browser act: the guard refuses its origin.
        status = httpx.post(
            f"{proc.url}/api/runs/{answer['id'].split('/')[-1]}/share",
            headers={"origin": "http://evil.example", "content-type": "application/json"},
            content="{}",
        ).status_code
        assert status == 403

        page.goto(f"{proc.url}/signin")
        page.fill('input[name="key"]', ADMIN_KEY)
        page.click('form button[type="submit"]')
        page.wait_for_url(f"{proc.url}/agents")
        assert ADMIN_LABEL in page.inner_text("header")
        shot(page, "admin")
    finally:
        ctx.close()
        _stop(proc)
