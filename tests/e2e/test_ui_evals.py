"""Evaluations in the web UI, in Debian's headless Chromium (as test_ui.py): a benchmark started
from the Benchmarks page runs to the end with its table (the best of each column marked) and
two candidates side by side; a run reviewed from its page shows on the Reviews page; another
tenant's benchmark is a 404 page; the pages fit a phone. Screenshots go to
tests/e2e/screenshots/.
"""

from __future__ import annotations

import re

import httpx
import pytest
from openai import OpenAI
from playwright.sync_api import expect

from conftest import API_KEY, INPUT_PER_MTOK, OUTPUT_PER_MTOK, _binary, _start, _stop, flowgate_config
from test_ui import TIMEOUT_MS, UiGateway, browser, context, no_dialogs, shot, sign_in  # noqa: F401

ACME_KEY = "acme-evals-key"
AGENT = "geo"
CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Peru", "Lima"), ("Kenya", "Nairobi")]


@pytest.fixture(scope="module")
def ui(tmp_path_factory, mock_upstream) -> UiGateway:
    binary = _binary("FLOWGATE_BIN")
    tmp = tmp_path_factory.mktemp("flowgate-ui-evals")
    def model(name: str, upstream_model: str, factor: float = 1.0) -> str:
        price = f"input_per_mtok = {INPUT_PER_MTOK * factor}, output_per_mtok = {OUTPUT_PER_MTOK * factor}"
        return f"""
[models."{name}"]
providers = [{{ provider = "upstream", model = "{upstream_model}", {price} }}]
"""

    config = (
        flowgate_config(tmp / "data", mock_upstream.base_url)
        + f"""
[auth.tenants.acme]
api_keys = ["{ACME_KEY}"]
"""
        + model("good", "gpt-4o-mini")
        + model("sloppy", "gpt-4o-mini;forget=Paris")
        + model("dear", "gpt-4o-mini", 100.0)
        + model("slow", "gpt-4o-mini;delay_ms=800")
        + model("judge", "gpt-4o-mini;judge")
    )
    path = tmp / "flowgate.toml"
    path.write_text(config)
    proc = _start([binary, "serve", "--config", str(path)], tmp / "stderr.log", "flowgate (ui evals)")
    yield UiGateway(proc.url, proc)
    _stop(proc)


def api(ui: UiGateway, method: str, path: str, body=None, key: str = API_KEY):
    response = httpx.request(
        method, f"{ui.url}{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    assert response.status_code < 300, f"{method} {path}: {response.status_code} {response.text}"
    return response.json()


@pytest.fixture(scope="module")
def evals(ui) -> dict:
    """A version of the agent (its echo holds the answer), a dataset of capitals, and the AI
    reviewer on the judging model; one run with a script tag in its input."""
    client = OpenAI(base_url=f"{ui.url}/v1", api_key=API_KEY, max_retries=0, timeout=30)
    raw = client.chat.completions.with_raw_response.create(
        model=f"{AGENT}/good",
        messages=[{"role": "user", "content": "Capital of {{ country }}? It is {{ answer }}."}],
        extra_body={"input": {"country": "Spain", "answer": "Madrid <script>alert(1)</script>"}},
    )
    answer = raw.parse()
    client.close()
    items = [{"input": {"country": c, "answer": a}, "expected": a} for c, a in CAPITALS]
    api(ui, "POST", f"/api/agents/{AGENT}/datasets", {"name": "capitals", "items": items})
    api(
        ui,
        "PUT",
        f"/api/agents/{AGENT}/reviewer",
        {"instructions": "Right when it names the expected city.", "model": "judge"},
    )
    return {"version": answer.model_extra["version_id"], "run_id": raw.headers["x-flowgate-run-id"]}


def test_start_a_benchmark_watch_it_finish_and_compare_two_candidates(context, ui, evals, shot):
    page = sign_in(context, ui, API_KEY)
    dialogs = no_dialogs(page)
    page.click(f"tr:has-text('{AGENT}') >> text=Benchmarks")
    page.wait_for_url(f"{ui.url}/agents/{AGENT}/benchmarks")
    assert "capitals" in page.inner_text("#datasets")
    assert "4" in page.locator("#datasets tbody tr").first.inner_text()

    # Three candidates: the version on its own model, on the sloppy one, on the dear one.
    page.select_option("#bench-dataset", "capitals")
    page.fill("#bench-concurrency", "2")
    page.click("#add-candidate")
    rows = page.locator("#candidates .candidate")
    assert rows.count() == 3
    for i, model in enumerate(["", "sloppy", "dear"]):
        rows.nth(i).locator('select[name="version"]').select_option(evals["version"])
        rows.nth(i).locator('input[name="model"]').fill(model)
    # A candidate with neither version nor model is refused on the page.
    rows.nth(2).locator('select[name="version"]').select_option("")
    rows.nth(2).locator('input[name="model"]').fill("")
    page.click('#start button[type="submit"]')
    expect(page.locator("#start-error")).to_have_text("A candidate without a version needs a model.")
    assert page.url.endswith("/benchmarks")
    rows.nth(2).locator('select[name="version"]').select_option(evals["version"])
    rows.nth(2).locator('input[name="model"]').fill("dear")
    shot(page, "form")
    page.click('#start button[type="submit"]')
    try:
        page.wait_for_url(re.compile(rf".*/agents/{AGENT}/benchmarks/[0-9a-f-]{{36}}$"))
    except Exception:
        # The page says why the API refused it.
        shot(page, "start-failed")
        raise AssertionError(page.inner_text("#start-error")) from None
    bench_url = page.url

    # The progress bar refreshes until the benchmark is done (then the page shows the end).
    expect(page.locator("#status")).to_have_text("done", timeout=60_000)
    expect(page.locator("#progress-text")).to_have_text("12 / 12")
    assert page.locator("#cancel").count() == 0
    table = page.locator("#bench-table")
    good = table.locator("tbody tr").nth(0)
    sloppy = table.locator("tbody tr").nth(1)
    dear = table.locator("tbody tr").nth(2)
    assert "sloppy" in sloppy.inner_text() and "dear" in dear.inner_text()
    # Accuracy: the sloppy model forgets Paris (3 of 4); the others are best.
    assert good.locator("td").nth(0).inner_text().startswith("100.0%")
    assert "best" in good.locator("td").nth(0).get_attribute("class")
    assert sloppy.locator("td").nth(0).inner_text() == "75.0%"
    assert "best" not in (sloppy.locator("td").nth(0).get_attribute("class") or "")
    # Cost: the dear model is never the cheapest; someone is.
    assert "best" not in (dear.locator("td").nth(4).get_attribute("class") or "")
    assert table.locator("td.best").count() >= 4
    assert "★ best" in table.inner_text()
    shot(page, "table")

    # Side by side: the version on good against it on sloppy, Paris right and wrong.
    page.select_option('#side-form select[name="a"]', "0")
    page.select_option('#side-form select[name="b"]', "1")
    page.click('#side-form button[type="submit"]')
    first = page.locator("#side-by-side .side-item").first
    expect(first).to_be_visible()
    assert page.locator("#side-by-side .side-item").count() == 4
    assert "Paris" in first.locator(".pair").first.inner_text()
    assert "Paris" in first.locator(".side-0 .output-text").inner_text()
    assert "Paris" not in first.locator(".side-1 .output-text").inner_text()
    assert first.locator(".side-0 .verdict").text_content() == "positive"
    assert first.locator(".side-1 .verdict").text_content() == "negative"
    assert "never says" in first.locator(".side-1 .reason").inner_text()
    shot(page, "side-by-side")

    # Listed on the Benchmarks page.
    page.click("nav.tabs >> text=Benchmarks")
    assert "12 / 12" in page.inner_text("#benchmarks")
    assert bench_url.rsplit("/", 1)[1] in page.inner_html("#benchmarks")
    assert dialogs == []


def test_a_started_benchmark_can_be_cancelled(context, ui, evals, shot):
    page = sign_in(context, ui, API_KEY)
    # A slow one to stop: 800 ms an answer, one at a time.
    created = api(
        ui,
        "POST",
        f"/api/agents/{AGENT}/benchmarks",
        {"dataset": "capitals", "concurrency": 1, "candidates": [{"version_id": evals["version"], "model": "slow"}]},
    )
    page.goto(f"{ui.url}/agents/{AGENT}/benchmarks/{created['benchmark']['id']}")
    expect(page.locator("#status")).to_have_text("running")
    page.click("#cancel")
    expect(page.locator("#status")).to_have_text("cancelled", timeout=30_000)
    assert page.locator("#cancel").count() == 0
    done = int(page.inner_text("#progress-text").split("/")[0])
    assert done < 4, "it ran to the end"
    shot(page)


def test_review_a_run_from_its_page_and_see_it_on_the_reviews_page(context, ui, evals, shot):
    page = sign_in(context, ui, API_KEY)
    dialogs = no_dialogs(page)
    page.goto(f"{ui.url}/runs/{evals['run_id']}")
    assert page.inner_text("#current-review") == "Not reviewed yet."
    page.fill("#review-comment", "names Madrid but <b>adds</b> noise")
    page.click('#review-form button[value="negative"]')
    expect(page.locator("#current-review .verdict")).to_have_text("negative")
    assert "<b>adds</b>" in page.inner_text("#review-comment-shown")
    shot(page, "run")

    page.click("#review >> text=Reviews of")
    page.wait_for_url(f"{ui.url}/agents/{AGENT}/reviews")
    row = page.locator("#reviews tbody tr", has_text="adds")
    assert row.count() == 1
    assert row.locator(".verdict").inner_text() == "negative"
    assert "person" in row.inner_text()
    # The input and output are shown as text, the script tag too.
    assert "<script>alert(1)</script>" in row.inner_text()
    # The benchmark's AI reviews are listed with their model.
    assert "AI on judge" in page.inner_text("#reviews")
    # The reviewer's settings are shown and can be changed.
    assert page.input_value("#reviewer-model") == "judge"
    page.fill("#reviewer-instructions", "Right when it names the expected city, and nothing else.")
    with page.expect_navigation():
        page.click('#reviewer button[type="submit"]')
    assert "nothing else" in page.input_value("#reviewer-instructions")
    settings = api(ui, "GET", f"/api/agents/{AGENT}/reviews")
    assert any(r["comment"] == "names Madrid but <b>adds</b> noise" for r in settings["data"])
    assert dialogs == []
    shot(page, "reviews")


def test_another_tenants_benchmark_is_a_404_page(browser, ui, evals, shot):
    benchmarks = api(ui, "GET", f"/api/agents/{AGENT}/benchmarks")["data"]
    assert benchmarks, "no benchmark to look for"
    ctx = browser.new_context()
    ctx.set_default_timeout(TIMEOUT_MS)
    try:
        page = sign_in(ctx, ui, ACME_KEY)
        response = page.goto(f"{ui.url}/agents/{AGENT}/benchmarks/{benchmarks[0]['id']}")
        assert response.status == 404
        assert "capitals" not in page.inner_text("main")
        page.goto(f"{ui.url}/agents/{AGENT}/benchmarks")
        assert "No benchmarks yet" in page.inner_text("#benchmarks")
        assert "No datasets yet" in page.inner_text("#datasets")
        page.goto(f"{ui.url}/agents/{AGENT}/reviews")
        assert "No reviews yet" in page.inner_text("#reviews")
        shot(page)
    finally:
        ctx.close()


def test_evaluation_pages_fit_a_phone_screen(browser, ui, evals, shot):
    benchmarks = api(ui, "GET", f"/api/agents/{AGENT}/benchmarks")["data"]
    done = next(b for b in benchmarks if len(b["candidates"]) == 3 and b["status"] == "done")
    ctx = browser.new_context(viewport={"width": 390, "height": 844})
    ctx.set_default_timeout(TIMEOUT_MS)
    try:
        page = sign_in(ctx, ui, API_KEY)
        for path, name in [
            (f"/agents/{AGENT}/benchmarks", "benchmarks"),
            (f"/agents/{AGENT}/benchmarks/{done['id']}?a=0&b=1", "benchmark"),
            (f"/agents/{AGENT}/reviews", "reviews"),
            (f"/runs/{evals['run_id']}", "run"),
        ]:
            response = page.goto(f"{ui.url}{path}")
            assert response.status == 200, path
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"{path} is {width} px wide"
            shot(page, name)
    finally:
        ctx.close()
