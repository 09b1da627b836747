"""The HTML leaderboard in a real headless Chromium (Debian's ``chromium`` package driven by Playwright).

Never runs ``playwright install``: the browser is /usr/bin/chromium. Screenshots go to ``screenshots/`` (ignored by
git; the layout tests save the leaderboard at phone, tablet and desktop widths there). Install with
``apt-get install -y chromium`` and ``pip install playwright``.
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
SCREENSHOTS = Path(__file__).resolve().parents[1] / "screenshots"  # git-ignored
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
    assert "/results/*" in gitignore and "/screenshots/" in gitignore


# --- reading the leaderboard: score-first layout, ties, seeds, evaluation sets, references, cost plots ----------

WIDTHS = {"desktop": (1280, 800), "tablet": (800, 900), "phone": (390, 844)}


@pytest.fixture(scope="module")
def default_site(tmp_path_factory) -> Path:
    from test_report_fixtures import build_default_world

    from cme_bench.taskreg import suite_tasks, task_info

    root = tmp_path_factory.mktemp("default")
    results = build_default_world(root / "results", suite_tasks("cme-mini"))
    out = root / "site"
    write_site(build_report(results, task_info=task_info, out=out, n_boot=200), out)
    return out


def _inside(box, width, height) -> bool:
    return box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= width and box["y"] + box["height"] <= height


@pytest.mark.parametrize("device", WIDTHS)
def test_first_score_cell_is_on_the_first_screen(default_site, browser, device):
    width, height = WIDTHS[device]
    page = browser.new_page(viewport={"width": width, "height": height})
    problems = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("request", lambda r: r.url.startswith("file://") or problems.append(r.url))
    page.goto((default_site / "index.html").as_uri())
    first = page.locator("#board tbody tr").first
    ids = page.eval_on_selector_all("#board tbody tr", "rows => rows.map(r => r.dataset.id)")
    assert max(map(len, ids)) >= len("smollm2-135m--moelora-fused--cme-mini--s0--1a2b3c4d")  # long ids in the data
    score = first.locator("td[data-group=aggregate]").first
    assert _inside(score.bounding_box(), width, height), (device, score.bounding_box())
    assert _inside(first.locator("td[data-key=rank]").bounding_box(), width, height)
    label = first.locator("td[data-key=run]")
    assert label.get_attribute("title").startswith("smollm2-135m--")  # full id on hover
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"leaderboard-{device}-{width}.png"))
    # Scrolled sideways, rank and label stay where they were (sticky).
    before = label.bounding_box()["x"]
    page.locator("#board").evaluate("t => t.parentElement.scrollLeft = 600")
    assert label.bounding_box()["x"] == pytest.approx(before, abs=1)
    page.screenshot(path=str(SCREENSHOTS / f"leaderboard-{device}-{width}-scrolled.png"))
    page.close()
    assert problems == []


def _site(tmp_path, build) -> Path:
    results = tmp_path / "results"
    build(results)
    out = tmp_path / "site"
    write_site(build_report(results, task_info=fake_task_info, out=out, n_boot=300), out)
    return out


def test_all_tied_rows_are_grouped_and_not_bold(tmp_path, page):
    from test_report_fixtures import write_run

    def build(root):
        # 20 documents, equal or nearly equal means, different items right: nobody is separable
        for method, a in (("lora", [1, 0] * 10), ("dora", [0, 1] * 10), ("teamlora", [1, 1, 0, 0] * 4 + [1] * 4)):
            write_run(root, f"tied-{method}", method=method, scores={"t_a": a, "t_b": a, "t_c": a})

    page.goto((_site(tmp_path, build) / "index.html").as_uri())
    assert page.locator("#board tbody tr[data-tie]").count() == 3
    assert page.locator("#board tbody tr.tied").count() == 3
    assert page.locator("#board td.best[data-group=aggregate], #board td.best[data-group=task]").count() == 0
    # the comparison with the leader says how small a difference these 20 documents could detect
    mdd = page.locator("#board tbody tr").nth(1).locator("td[data-key=mdd]")
    assert float(mdd.text_content()) > 0 and "detected 80% of the time" in mdd.get_attribute("title")
    shot(page, "leaderboard-all-tied")
    assert page.problems == []


def test_separable_rows_are_not_grouped_and_best_is_bold(tmp_path, page):
    from test_report_fixtures import write_run

    def build(root):
        strong, weak = [1] * 180 + [0] * 20, [1] * 60 + [0] * 140
        write_run(root, "strong", method="teamlora", scores={"t_a": strong, "t_b": strong, "t_c": strong})
        write_run(root, "weak", method="lora", scores={"t_a": weak, "t_b": weak, "t_c": weak})

    page.goto((_site(tmp_path, build) / "index.html").as_uri())
    assert page.locator("#board tbody tr[data-tie]").count() == 0
    assert (
        page.locator("#board tbody tr").first.locator("td[data-key=cme_avg_domains]").get_attribute("class") == "best"
    )
    assert page.problems == []


def test_seed_group_is_one_row_with_std_and_drill_down(tmp_path, page):
    from test_report_fixtures import write_run

    def build(root):
        for seed, a in ((0, [1, 1, 0, 0]), (1, [1, 1, 1, 0]), (2, [1, 0, 0, 0])):
            cfg = {"model": "tiny-llama", "adapter": "lora", "suite": "cme-mini", "seed": seed, "max_steps": 2}
            write_run(root, f"tiny--lora--s{seed}", name="lora", scores={"t_a": a, "t_b": a}, extra={"config": cfg})
        cfg = {"model": "tiny-llama", "adapter": "none", "suite": "cme-mini", "seed": 0}
        write_run(
            root,
            "tiny--none--s0",
            name="none",
            method="none",
            scores={"t_a": [0] * 4, "t_b": [0] * 4},
            extra={"config": cfg},
        )

    page.goto((_site(tmp_path, build) / "index.html").as_uri())
    rows = page.locator("#board tbody tr")
    assert rows.count() == 2
    group = page.locator("#board tbody tr[data-id='tiny--lora--s0+1+2']")
    assert group.locator("td[data-key=seeds]").text_content() == "3"
    # per-seed means .5, .75, .25 on t_a: mean 50.0, std 25.0
    assert group.locator("td[data-key='task:t_a']").text_content().startswith("50.0 ± 25.0")
    group.locator("td[data-key=run] a").click()
    page.wait_for_load_state()
    assert page.locator("#seeds tr.seed-row").count() == 3
    assert [t.strip() for t in page.locator("#seeds tr.seed-row td:first-child").all_text_contents()] == [
        "seed 0",
        "seed 1",
        "seed 2",
    ]
    shot(page, "seed-group")
    assert page.problems == []


def test_other_limit_is_not_ranked_with_the_rest(default_site, page):
    page.goto((default_site / "index.html").as_uri())
    main_ids = page.eval_on_selector_all("#board tbody tr", "rows => rows.map(r => r.dataset.id)")
    assert not any("--dora--" in i for i in main_ids)
    other = page.locator("section.other-set")
    assert other.count() == 1 and "other documents" in other.locator(".flag").text_content()
    assert other.locator("tbody tr").count() == 1 and other.locator("td[data-key=rank]").text_content() == "1"
    assert page.problems == []


def test_reference_rows_render_and_are_not_ranked(default_site, page):
    page.goto((default_site / "index.html").as_uri())
    refs = page.locator("section.references tbody tr.reference")
    assert refs.count() == 6
    assert "Reported, not reproduced here" in page.locator("section.references h2").text_content()
    assert "60.29" in refs.nth(4).text_content() and "unverified" in refs.nth(4).text_content()
    assert page.locator("#board tbody tr[data-reference]").count() == 0
    ids = page.eval_on_selector_all("#board tbody tr", "rows => rows.map(r => r.dataset.id)")
    assert not any("TeamLoRA" in i for i in ids)
    assert page.problems == []


def test_cost_plot_log_axis_and_labels(default_site, page):
    page.goto((default_site / "costs.html").as_uri())
    for figure in page.locator("section.cost-figure").all():
        ticks = figure.locator("svg text.tick").all_text_contents()
        assert "0" not in ticks and "0 s" not in ticks
        points = figure.locator("svg circle.pt").evaluate_all("cs => cs.map(c => c.dataset.label)")
        labels = figure.locator("svg text.pt-label").all_text_contents()
        assert points and all(p in labels for p in points)
        assert any(t.startswith("base model") for t in labels)  # marked separately, not at x = 0
    not_plotted = page.locator("section.cost-figure").nth(1).locator(".not-plotted").text_content()
    assert "teamlora-balance: not plotted: no training time" in not_plotted
    shot(page, "costs-default")
    assert page.problems == []


def test_run_page_is_structured(default_site, page):
    page.goto(next((default_site / "runs").glob("smollm2-135m--lora--cme-mini--s0--*")).as_uri())
    titles = page.locator(".facts h2").all_text_contents()
    assert titles[:3] == ["What was trained", "On what", "How long"] and "What it cost" in titles
    facts = " ".join(page.locator("main .facts").all_text_contents())
    assert "Decode (ms/token)" in facts and "decode_ms_per_token" not in facts
    raw = page.locator("details.raw")
    assert not raw.evaluate("d => d.open")  # raw JSON behind a toggle
    shot(page, "run-page-structured")
    assert page.problems == []
