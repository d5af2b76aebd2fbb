"""results/index.html, the one results page: built by `report build` from the fixture results (report_fixtures) with
the probe stage's figures and two models beyond the study (kto, orpo), read as HTML and loaded from disk in headless
Chromium."""

from __future__ import annotations

import base64
import contextlib
import csv
import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from click.testing import CliRunner

from report_fixtures import make_world, metrics
from sycorec.cli import main
from sycorec.config import load_config
from sycorec.io import read_json
from sycorec.probe.figures import STEMS, plot_all
from sycorec.report.build import build_report
from sycorec.report.results import PROBING_FILES
from sycorec.report.tables import load_spec

SPEC = load_spec()
EXTRAS = ("kto", "orpo")
# where the browser test saves a screenshot of each post's section (default: a pytest temporary directory)
SCREENSHOTS_ENV = "SYCOREC_PAGE_SCREENSHOTS"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
]


def add_models_beyond_the_study(root: Path) -> None:
    """As `dvc exp run -S` would: kto and orpo evaluated (models), kto probed in R6; their stage outputs beside."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["models"] += list(EXTRAS)
    params["probing"]["runs"]["R6"]["models"].append("kto")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    res = root / "results"
    for model, aggregate in zip(EXTRAS, (0.211, 0.322), strict=True):
        values = metrics("dpo")
        values["aggregate_sycophancy"] = aggregate
        values["ci"]["aggregate_sycophancy"] = [aggregate - 0.02, aggregate + 0.02]
        (res / "metrics" / f"{model}.json").write_text(json.dumps(values))
    run = res / "probing" / "R6"
    probing = {name: read_json(run / f"{name}.json") for name in ("per_model", "transfer", "cosine")}
    probing["per_model"]["kto"] = probing["per_model"]["dpo"]
    probing["transfer"]["kto"] = {**probing["transfer"]["dpo"], "mean_auroc": 0.61}
    for model in list(probing["per_model"]):
        if model != "kto":
            probing["cosine"][f"{model}_vs_kto"] = {"per_layer": [0.1], "mean_cosine": 0.1}
    for name, value in probing.items():
        (run / f"{name}.json").write_text(json.dumps(value))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The results directory after the probe stages' figures, `report build` and `report diff`, as the DAG runs them."""
    root = make_world(tmp_path_factory.mktemp("page"))
    add_models_beyond_the_study(root)
    cfg = load_config(root / "params.yaml")
    for run in cfg.probing.runs:
        run_dir = root / "results" / "probing" / run
        results = {name: read_json(run_dir / f"{name}.json") for name in PROBING_FILES}
        plot_all(results, root / "results" / "figures" / "probing" / run, cfg.report.figure_dpi)
    build_report(cfg, root=root)
    with contextlib.chdir(root):
        result = CliRunner().invoke(main, ["report", "diff", "--post", "all", "--exit-zero"])
    assert result.exit_code == 0, result.output
    return root / "results"


class Page(HTMLParser):
    """The ids, image sources, link targets and tag names of a page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.tags: set[str] = set()
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.add(tag)
        if a.get("id"):
            self.ids.append(a["id"])
        if tag == "img":
            self.images.append(a["src"])
        if tag == "a" and not a["href"].startswith("#"):
            self.links.append(a["href"])


@pytest.fixture(scope="module")
def html(site: Path) -> str:
    return (site / "index.html").read_text(encoding="utf-8")


def test_every_table_and_section_is_on_the_page(html: str) -> None:
    ids = Page(html).ids
    assert len(ids) == len(set(ids))
    tables = [f"{post}-{spec['id']}" for post, specs in SPEC["tables"].items() for spec in specs]
    assert set(tables) <= set(ids)
    assert {*SPEC["tables"], "probing", "published-diff", "errata", "beyond", "provenance"} <= set(ids)
    # cells as the Markdown tables show them: value [CI], p-values
    assert "0.169 [0.15, 0.19]" in html and "0.784 [0.68, 0.88] (p=0.005)" in html


def test_every_figure_is_shown_and_every_file_is_local(site: Path, html: str) -> None:
    page = Page(html)
    report = [f"figures/report/{fig['id']}.png" for fig in SPEC["figures"]]
    probing = [f"figures/probing/{run}/{stem}.png" for run in ("R3030", "R6") for stem in STEMS]
    assert set(page.images) == {*report, *probing, "figures/report/beyond_study.png"}
    for target in page.images + page.links:
        assert not urlparse(target).scheme and not target.startswith("//"), target
        assert (site / target).is_file(), target  # incl. the Markdown/CSV/PDF/JSON files beside the page
    assert any(t.endswith(".pdf") for t in page.links) and "tables/post4/behaviour.csv" in page.links
    assert not page.tags & {"script", "link", "iframe"}  # inline CSS, nothing fetched but the figures


def test_published_diff_is_coloured_by_status_with_the_stages_summary(site: Path, html: str) -> None:
    for post in ("post1", "post2", "post3", "post4"):
        written = read_json(site / "published_diff" / f"{post}.json")
        assert written["summary"] in html  # the page's diff is the stage's
        for status in written["counts"]:
            assert f'<tr class="{status}">' in html
    assert "tr.FAIL td.status" in html and "tr.PASS td.status" in html


def test_errata_and_provenance(site: Path, html: str) -> None:
    assert html.count("<tr><th>24</th>") == 1  # the errata's last row
    manifest = read_json(site / "manifest.json")
    assert manifest["params_sha256"] in html
    assert "score@base" in html  # timings.json


def test_models_beyond_the_study_get_a_table_and_a_figure(site: Path, html: str) -> None:
    with (site / "tables" / "beyond_study.csv").open(encoding="utf-8", newline="") as fh:
        rows = {(c["row"], c["column"]): c["display"] for c in csv.DictReader(fh)}
    assert rows[("Aggregate", "kto")] == "0.211 [0.19, 0.23]"
    assert rows[("Aggregate", "orpo")] == "0.322 [0.30, 0.34]"
    assert rows[("Aggregate", "SFT")] == "0.467 [0.45, 0.49]"
    # kto is in R6: its own probe and SFT's probe transfer; orpo is in no probing run
    assert rows[("SFT→X mean transfer (R6)", "kto")] == "0.610"
    assert rows[("SFT→X mean transfer (R6)", "SFT")] == "—"
    assert rows[("SFT→X peak transfer (R6)", "kto")] == "0.784 [0.68, 0.88]"
    assert rows[("Own-model mean AUROC (R6)", "orpo")] == rows[("SFT→X mean transfer (R6)", "orpo")] == "—"
    assert "n/a" not in rows.values()
    assert "Beyond the study: kto, orpo beside SFT" in html
    assert (site / "figures" / "report" / "beyond_study.pdf").is_file()


@pytest.mark.slow  # launches a browser
@pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (`apt-get install chromium chromium-driver`; .ci/run does)",
)
def test_page_loads_in_headless_chromium(site: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """From disk, no console error, every image decoded; a screenshot of each post's section."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    shots = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path_factory.mktemp("page_screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.get((site / "index.html").as_uri())
        WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.readyState") == "complete")
        images = driver.execute_script(
            "return Array.from(document.images, i => [i.getAttribute('src'), i.complete, i.naturalWidth])"
        )
        assert len(images) == len(Page((site / "index.html").read_text(encoding="utf-8")).images)
        assert [src for src, complete, width in images if not complete or width == 0] == []
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []
        driver.execute_script("document.querySelector('nav').style.position = 'static'")  # not over every shot
        for post in SPEC["tables"]:
            box = driver.execute_script(
                "const r = document.getElementById(arguments[0]).getBoundingClientRect();"
                "return {x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height, scale: 1};",
                post,
            )
            shot = driver.execute_cdp_cmd(
                "Page.captureScreenshot", {"format": "png", "clip": box, "captureBeyondViewport": True}
            )
            (shots / f"{post}.png").write_bytes(base64.b64decode(shot["data"]))
    finally:
        driver.quit()
    for post in SPEC["tables"]:
        assert (shots / f"{post}.png").read_bytes()[:4] == b"\x89PNG"
