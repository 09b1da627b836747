"""The HTML leaderboard in a real headless Chromium (Debian's ``chromium`` package driven by Playwright).

Never runs ``playwright install``: the browser is /usr/bin/chromium. Screenshots go to ``results/screenshots/``
(ignored by git). Install with ``apt-get install -y chromium`` and ``pip install playwright``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_report_fixtures import build_world, fake_task_info

from cme_bench.report.pipeline import build_report, write_site

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "results" / "screenshots"
EVIL = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    results = build_world(root / "results")
    out = root / "site"
    write_site(build_report(results, task_info=fake_task_info, out=out, n_boot=200), out)
    return out


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing: `apt-get update && apt-get install -y chromium`")
    sync_api = pytest.importorskip("playwright.sync_api", reason="`pip install playwright` (no `playwright install`)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.problems = []  # console errors, page errors, dialogs, network requests leaving file://
    page.on("console", lambda m: m.type == "error" and page.problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: page.problems.append(f"pageerror: {e}"))
    page.on("dialog", lambda d: (page.problems.append(f"dialog: {d.message}"), d.dismiss()))
    page.on("request", lambda r: r.url.startswith("file://") or page.problems.append(f"network: {r.url}"))
    yield page
    page.close()


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def run_names(page) -> list[str]:
    return page.eval_on_selector_all(
        "#board tbody tr:not(.hidden) td[data-key=run]", "els => els.map(e => e.textContent)"
    )


def test_leaderboard_loads_without_errors(site, page):
    page.goto((site / "index.html").as_uri())
    assert page.title().startswith("Leaderboard")
    assert run_names(page) == [EVIL, "tiny--lora", "tiny--none", "tiny--broken"]
    shot(page, "leaderboard")
    assert page.problems == []


def test_malicious_name_is_text(site, page):
    page.goto((site / "index.html").as_uri())
    link = page.locator("#board td[data-key=run] a").first
    assert link.text_content() == EVIL
    assert page.locator("#board td[data-key=run] script").count() == 0
    page.goto((site / "samples" / "t_a.html").as_uri())
    assert page.locator("#run-a option").first.text_content() == EVIL
    assert page.locator("#samples-head th").nth(3).text_content() == "A: " + EVIL
    shot(page, "samples-side-by-side")
    assert page.problems == []  # in particular no alert() dialog


def test_header_click_resorts(site, page):
    page.goto((site / "index.html").as_uri())
    header = page.locator("#board thead th", has_text="Trainable params")
    header.click()  # lower is better: ascending first; missing values last
    # 0 (base), 40 (teamlora), 40 (the failed dora run; ties keep their order), 100 (lora)
    assert run_names(page) == ["tiny--none", EVIL, "tiny--broken", "tiny--lora"]
    assert header.get_attribute("aria-sort") == "ascending"
    header.click()
    assert header.get_attribute("aria-sort") == "descending"
    assert run_names(page)[0] == "tiny--lora"
    page.locator("#board thead th", has_text="Run").first.click()
    assert run_names(page) == sorted(run_names(page), key=str.lower)
    assert page.problems == []


def test_filters_hide_rows_and_columns(site, page):
    page.goto((site / "index.html").as_uri())
    page.select_option("select[data-filter=method]", "lora")
    assert run_names(page) == ["tiny--lora"]
    assert page.locator(".js-count").first.text_content() == "1"
    page.select_option("select[data-filter=method]", "")
    page.select_option("select[data-filter=status]", "failed")
    assert run_names(page) == ["tiny--broken"]
    page.select_option("select[data-filter=status]", "")
    page.select_option("select[data-domain-filter]", "knowledge")
    visible = page.eval_on_selector_all("#board thead th:not(.hidden)", "els => els.map(e => e.dataset.domain)")
    assert "reasoning" not in visible and "knowledge" in visible
    page.fill("input[data-search]", "none")
    assert run_names(page) == ["tiny--none"]
    shot(page, "leaderboard-filtered")
    assert page.problems == []


def test_drill_down_to_task_page(site, page):
    page.goto((site / "index.html").as_uri())
    page.locator("#board tbody tr").first.locator("td[data-key='task:t_a'] a").click()
    page.wait_for_load_state()
    assert page.url.endswith("/tasks/t_a.html")
    assert page.locator("h1").text_content() == "Task A"
    assert page.locator("#board tbody tr").count() == 4
    shot(page, "task-page")
    page.get_by_text("Per-sample viewer").click()
    page.wait_for_load_state()
    assert page.url.endswith("/samples/t_a.html")
    # A = teamlora [1,1,1,0], B = lora [1,1,0,0]: one discordant pair, so McNemar p = 2 · 1/2 = 1
    assert "only A 1, only B 0" in page.locator("#summary").text_content()
    assert "McNemar exact p = 1.00 on 4 paired items" in page.locator("#summary").text_content()
    page.select_option("#show", "disagree")
    assert page.locator("#samples-body tr").count() == 1  # teamlora vs lora on t_a: only doc 2 differs
    assert page.problems == []


def test_other_pages_render(site, page):
    for name in (
        "runs/tiny--teamlora.html",
        "runs/tiny--broken.html",
        "costs.html",
        "methods.html",
        "domains/reasoning.html",
    ):
        page.goto((site / name).as_uri())
        assert page.locator("h1").count() == 1
        shot(page, name.replace("/", "-").removesuffix(".html"))
    assert page.problems == []


def test_screenshots_folder_is_ignored():
    gitignore = (Path(__file__).resolve().parents[1] / ".gitignore").read_text()
    assert "/results/*" in gitignore
