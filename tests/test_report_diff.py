"""`sycorec report diff`: tolerance rules, PASS/FAIL/MISSING/SKIP, exit codes, tiny-profile structure check, and the
consistency of published.yaml with tables.yaml."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from report_fixtures import make_world
from sycorec.cli import main
from sycorec.config import load_config
from sycorec.errors import ConfigError
from sycorec.report.build import build_report
from sycorec.report.diff import compare_entry, diff_post, load_published, published_path, within
from sycorec.report.results import Results, load_results
from sycorec.report.tables import load_spec

ROOT = Path(__file__).resolve().parents[1]
SPEC = load_spec()
PUBLISHED = load_published(published_path(ROOT / load_config(ROOT / "params.yaml").report.published))
TOL = PUBLISHED["tolerances"]


def entry(**kw: object) -> dict:
    return {
        "id": "x",
        "model": "m",
        "path": "metrics.m.flip_rate",
        "published": 0.5,
        "kind": "rate_flip",
        "source": "s",
    } | kw


def results_with(value: object) -> Results:
    return Results({"metrics": {"m": {"flip_rate": value}}})


def test_within_abs_relative_and_same_side_edges() -> None:
    assert within(0.500, 0.532, {"abs": 0.032})  # exactly on the edge passes
    assert not within(0.500, 0.5321, {"abs": 0.032})
    assert within(0.26, 0.2968, {"abs": 0.032}, rounding=0.005)  # printed "26%" widens by half a unit
    assert not within(0.26, 0.2980, {"abs": 0.032}, rounding=0.005)
    assert within(6.89, 8.6, {"relative": 0.25}) and not within(6.89, 8.7, {"relative": 0.25})
    assert within(0.005, 0.04, {"same_side": 0.05}) and within(0.761, 0.2, {"same_side": 0.05})
    assert not within(0.154, 0.025, {"same_side": 0.05})


def test_compare_entry_statuses() -> None:
    assert compare_entry(entry(), results_with(0.52), TOL).status == "PASS"
    failed = compare_entry(entry(), results_with(0.60), TOL)
    assert (failed.status, failed.delta, failed.tolerance) == ("FAIL", pytest.approx(0.10), "±0.032")
    assert compare_entry(entry(), results_with(None), TOL).status == "MISSING"
    assert compare_entry(entry(), results_with(float("nan")), TOL).status == "MISSING"
    assert compare_entry(entry(), Results({}), TOL).status == "MISSING"
    assert compare_entry(entry(check=False), results_with(0.9), TOL).status == "SKIP"
    assert (
        compare_entry(entry(kind="p_value", published=0.154), results_with(0.025), TOL).tolerance == "same side of 0.05"
    )


def test_published_file_is_consistent_with_tables() -> None:
    tables = {f"{post}/{spec['id']}" for post, specs in SPEC["tables"].items() for spec in specs}
    ids = Counter(e["id"] for entries in PUBLISHED["posts"].values() for e in entries)
    assert not [i for i, n in ids.items() if n > 1]
    assert set(PUBLISHED["posts"]) == {"post1", "post2", "post3", "post4"}
    for post, entries in PUBLISHED["posts"].items():
        for e in entries:
            assert {"id", "table", "model", "path", "published", "kind", "source"} <= set(e), e
            assert e["table"] is None or e["table"] in tables, e["id"]
            assert e["table"] is None or e["table"].startswith(post), e["id"]
    for kind, rule in TOL.items():
        assert rule.get("why"), kind
        assert len({"abs", "relative", "same_side"} & set(rule)) == 1, kind


def test_load_published_rejects_unknown_kind(tmp_path: Path) -> None:
    bad = tmp_path / "published.yaml"
    bad.write_text(
        "tolerances: {rate: {abs: 0.1, why: x}}\nposts:\n  post1:\n    - {id: a, path: p, published: 1, kind: auroc}\n"
    )
    with pytest.raises(ConfigError, match="kind 'auroc'"):
        load_published(bad)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_world(tmp_path_factory.mktemp("world"))
    build_report(load_config(root / "params.yaml"), root=root)
    return root


def test_full_scale_post4_passes_on_a_matching_run(world: Path) -> None:
    results = load_results(load_config(world / "params.yaml"), join=SPEC["join"], root=world)
    result = diff_post("post4", PUBLISHED, results, SPEC, world / "results" / "tables", tiny=False)
    assert result.counts["PASS"] == len(PUBLISHED["posts"]["post4"])
    assert not result.failed
    assert result.summary() == f"post4: {len(PUBLISHED['posts']['post4'])} PASS, 0 FAIL, 0 MISSING, 0 SKIP"
    # post 3 quotes R5's probing run, which the R6-valued fixture does not reproduce (errata 9-10)
    post3 = diff_post("post3", PUBLISHED, results, SPEC, world / "results" / "tables", tiny=False)
    failed = {ln.id for ln in post3.lines if ln.status == "FAIL"}
    assert {"p3.peak_layer.ipo", "p3.ablation_retrained.ipo", "p3.corrected_p.simpo"} <= failed


def test_cli_diff_fail_missing_and_exit_codes(world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(world)
    metrics = world / "results/metrics/grpo_v3.json"
    original = metrics.read_text()
    data = json.loads(original)
    data["flip_rate"] = 0.2  # published 0.082: FAIL
    del data["hedged_rate"]  # MISSING
    metrics.write_text(json.dumps(data))
    try:
        result = CliRunner().invoke(main, ["report", "diff", "--post", "4"])
        assert result.exit_code == 1
        n = len(PUBLISHED["posts"]["post4"])
        assert f"post4: {n - 2} PASS, 1 FAIL, 1 MISSING, 0 SKIP" in result.output
        assert any(line.startswith("FAIL") and "p4.flip.grpo" in line for line in result.output.splitlines())
        report = json.loads((world / "results/published_diff/post4.json").read_text())
        statuses = {x["id"]: x["status"] for x in report["numbers"]}
        assert statuses["p4.flip.grpo"] == "FAIL" and statuses["p4.hedged.grpo"] == "MISSING"
        assert report["mode"] == "values"
        md = (world / "results/published_diff/post4.md").read_text()
        assert "| p4.flip.grpo | grpo_v3 | 0.2 | 0.082 | 0.118 | ±0.032 | FAIL |" in md
        assert CliRunner().invoke(main, ["report", "diff", "--post", "4", "--exit-zero"]).exit_code == 0
    finally:
        metrics.write_text(original)
    assert CliRunner().invoke(main, ["report", "diff", "--post", "4"]).exit_code == 0


def test_tiny_profile_checks_structure_not_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_world(tmp_path)
    monkeypatch.chdir(root)
    metrics = root / "results/metrics/sft.json"
    data = json.loads(metrics.read_text())
    data["aggregate_sycophancy"] = 0.9  # far from the published 0.467: irrelevant in tiny mode
    metrics.write_text(json.dumps(data))
    runner = CliRunner()
    assert runner.invoke(main, ["--profile", "tiny", "report", "build"]).exit_code == 0
    ok = runner.invoke(main, ["--profile", "tiny", "report", "diff", "--post", "all"])
    assert ok.exit_code == 0, ok.output
    assert "post4 (tiny profile: structure only, values not compared): 8 tables, 0 structure problems" in ok.output
    assert "FAIL" not in ok.output
    # full-only numbers (step 30 of a 50-step curve) are skipped, not missing
    report = json.loads((root / "results/published_diff/post1.json").read_text())
    assert report["mode"] == "structure"
    assert {x["id"]: x["status"] for x in report["numbers"]}["p1.relearn.dpo.step30"] == "SKIP"

    (root / "results/tables/post4/cosine.csv").unlink()
    (root / "results/probing/control.json").unlink()
    bad = runner.invoke(main, ["--profile", "tiny", "report", "diff", "--post", "4"])
    assert bad.exit_code == 1
    assert "STRUCTURE" in bad.output and "cosine.csv: missing" in bad.output
    assert "p4.control_floor" in bad.output and "MISSING" in bad.output
