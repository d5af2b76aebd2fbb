"""End to end: the whole DAG through DVC with the tiny profile, in a scratch copy, as `make demo` runs it.

One run (a few minutes on 2 cores) serves every assertion below; a second `sycorec demo` must be a no-op.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sycorec.demo import sweep
from sycorec.facts import headline_keys
from sycorec.report import sweep_record

ROOT = Path(__file__).resolve().parents[1]
# The organism's directions and their margins come from the committed seed sweep (`sycorec demo --seeds`): a direction
# is asserted only where the sweep found it robust across seeds and CPU kernel paths, with margin mean − 2 SD.
SWEEP_RECORD = ROOT / "code" / "sycorec" / "report" / "tiny_sweep.json"

pytestmark = pytest.mark.slow


def _demo(workdir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(
        [sys.executable, "-m", "sycorec", "demo", "--profile", "tiny", "--dir", str(workdir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("demo")
    proc = _demo(workdir)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last == f"results: {workdir / 'results'}"
    return workdir


def _metrics(demo: Path, model: str) -> dict:
    return json.loads((demo / "results" / "metrics" / f"{model}.json").read_text())


def _curve(demo: Path, run: str) -> dict:
    return json.loads((demo / "results" / "curves" / f"{run}.json").read_text())


def test_every_model_has_a_metrics_file_with_identical_headline_keys(demo):
    params = yaml.safe_load((demo / "params.yaml").read_text())
    for model in params["models"]:
        metrics = _metrics(demo, model)
        assert set(metrics) >= set(headline_keys()), model  # the metric registry's
        assert set(metrics["ci"]) == set(_metrics(demo, "base")["ci"])


def test_tiny_base_answers_held_out_questions(demo):
    base = json.loads((demo / "results" / "train" / "base.json").read_text())
    assert base["heldout_accuracy"] >= 0.8


def test_organism_directions_hold_with_the_sweeps_margins(demo):
    """SFT raises sycophancy above the base and the preference losses bring it below SFT, where the sweep says so."""
    margins = sweep_record.margins(json.loads(SWEEP_RECORD.read_text()))
    assert "answer_sycophancy_rate: sft > base" in margins  # the organism's core claim is robust
    run = sweep.read_run(demo / "results")
    misses = [
        f"{d.name}: {d.delta(run):+.3f} (margin {margins[d.name]:.2f})"
        for d in sweep_record.DIRECTIONS
        if d.name in margins and not d.delta(run) > margins[d.name]
    ]
    assert not misses, misses


def test_proxy_curves_cover_every_training_run(demo):
    params = yaml.safe_load((demo / "params.yaml").read_text())
    runs = ["sft", "dpo", "simpo", "ipo", *(f"grpo_{v}" for v in params["train"]["grpo"]["versions"])]
    runs += [f"relearn_{start}" for start in params["train"]["relearn"]["starts"]]
    for run in runs:
        curve = _curve(demo, run)
        assert curve["step"][0] == 0 and curve["step"] == sorted(curve["step"]), run
        assert all(-1.0 <= gap <= 1.0 for gap in curve["sycophancy_gap"]), run


def test_a_preference_run_starts_from_the_merged_sft_model(demo):
    """Step 0 of a curve scores the run's starting model: DPO starts from the merged SFT model."""
    sft, dpo = _curve(demo, "sft")["sycophancy_gap"], _curve(demo, "dpo")["sycophancy_gap"]
    assert dpo[0] == pytest.approx(sft[-1], abs=0.02)  # merging the adapter keeps the model


def _table_files(demo: Path) -> list[tuple[str, str]]:
    spec = yaml.safe_load((ROOT / "code" / "sycorec" / "report" / "tables.yaml").read_text())
    return [(post, table["id"]) for post, tables in spec["tables"].items() for table in tables]


def test_every_table_exists_as_markdown_and_csv_with_rows_and_columns(demo):
    tables = demo / "results" / "tables"
    expected = _table_files(demo)
    assert {post for post, _ in expected} == {"post1", "post2", "post3", "post4"}
    for post, table_id in expected:
        markdown = (tables / post / f"{table_id}.md").read_text()
        header = next(line for line in markdown.splitlines() if line.startswith("|"))
        assert header.count("|") >= 3, (post, table_id)
        with (tables / post / f"{table_id}.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        assert rows, (post, table_id)
        assert {"row", "column", "value"} <= set(rows[0])
    assert (tables / "errata.md").is_file()


def test_figures_exist_as_png_and_pdf(demo):
    figures = demo / "results" / "figures"
    pngs = sorted(figures.rglob("*.png"))
    assert len(pngs) >= 8
    for png in pngs:
        assert png.with_suffix(".pdf").is_file()
        assert png.stat().st_size > 1000


def test_published_diff_checks_structure_in_the_tiny_profile(demo):
    for post in (1, 2, 3, 4):
        report = json.loads((demo / "results" / "published_diff" / f"post{post}.json").read_text())
        assert report["counts"].get("MISSING", 0) == 0, (post, report["counts"])  # relearning logs step 5 too


def test_manifest_and_timings(demo):
    manifest = json.loads((demo / "results" / "manifest.json").read_text())
    assert manifest["profile"] == "tiny" and len(manifest["params_sha256"]) == 64
    assert {"git", "lock_sha256", "versions", "hardware"} <= set(manifest["environment"])
    assert manifest["inputs"]
    timings = json.loads((demo / "results" / "timings.json").read_text())
    assert len(timings["stages"]) >= 10 and timings["total_seconds"] > 0


def test_second_demo_reruns_nothing(demo):
    lock = (demo / "dvc.lock").read_bytes()
    stamps = {p: p.stat().st_mtime_ns for p in (demo / "outputs" / "timings").iterdir()}
    proc = _demo(demo)
    assert proc.returncode == 0, proc.stderr[-2000:]
    output = proc.stdout + proc.stderr
    assert "Running stage" not in output and "started " not in output  # sequential and concurrent runs alike
    assert (demo / "dvc.lock").read_bytes() == lock
    assert {p: p.stat().st_mtime_ns for p in (demo / "outputs" / "timings").iterdir()} == stamps
    assert proc.stdout.strip().splitlines()[-1] == f"results: {demo / 'results'}"


def _dvc(demo: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=demo, env=env, capture_output=True, text=True, timeout=1800
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_the_demo_is_a_dvc_sandbox_for_experiments(demo):
    """In the demo's folder DVC's experiment commands work as in a checkout: an experiment on DPO's beta reruns DPO's
    stages, `dvc exp show` lists it with its metrics and `dvc metrics diff` shows the DPO model's changes. (Last in
    this module: it changes the DPO results, then restores the committed baseline.)"""
    before = _metrics(demo, "dpo")
    try:
        _dvc(demo, "exp", "run", "-n", "dpo-beta", "-S", "train.dpo.beta=0.2", "score@dpo")
        shown = json.loads(_dvc(demo, "exp", "show", "--json").stdout)
        experiments = [exp for rev in shown for exp in (rev.get("experiments") or [])]
        (ours,) = [exp for exp in experiments if exp.get("name") == "dpo-beta"]
        data = ours["revs"][0]["data"]
        assert data["params"]["params.yaml"]["data"]["train"]["dpo"]["beta"] == 0.2
        assert "results/metrics/dpo.json" in data["metrics"]
        diff = json.loads(_dvc(demo, "metrics", "diff", "--json").stdout)
        assert any(path.endswith("metrics/dpo.json") for path in diff), diff
        assert not any(path.endswith(("metrics/sft.json", "metrics/base.json")) for path in diff), diff
        assert _metrics(demo, "dpo") != before
        params = json.loads(_dvc(demo, "params", "diff", "--json").stdout)
        assert params["params.yaml"]["train.dpo.beta"]["new"] == 0.2
    finally:
        subprocess.run(["git", "checkout", "-q", "HEAD", "--", "."], cwd=demo, check=True)
        _dvc(demo, "checkout", "-q", "-f")
    assert _metrics(demo, "dpo") == before


def test_methods_beyond_the_study_flow_through_params_alone(demo):
    """KTO and ORPO, rows of the method table, are added by params alone (`sycorec demo --set`, a DVC experiment with
    warm stages): they are trained, evaluated, probed as R6 probes the study's models, listed by `dvc metrics show`,
    reported beyond the study's tables and compared with `sycorec compare --join`."""
    params = yaml.safe_load((demo / "params.yaml").read_text())
    methods = [*params["train"]["preference"]["methods"], "kto", "orpo"]
    models = [*params["models"], "kto", "orpo"]
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "sycorec", "demo", "--profile", "tiny", "--dir", str(demo), "--name", "beyond",
             "--set", f"train.preference.methods=[{','.join(methods)}]", "--set", f"models=[{','.join(models)}]",
             "--set", "probing.beyond.models=[kto,orpo]"],
            cwd=ROOT, capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        shown = json.loads(_dvc(demo, "metrics", "show", "--json").stdout)
        files = {path for rev in shown.values() for path in rev["data"]}
        assert {"results/metrics/kto.json", "results/metrics/orpo.json"} <= files
        beyond = (demo / "results" / "tables" / "beyond_study.md").read_text()
        page = (demo / "results" / "index.html").read_text()
        for method in ("kto", "orpo"):
            assert method in beyond and method in page
            assert 0.0 <= _metrics(demo, method)["answer_sycophancy_rate"] <= 1.0
            # probed on R6's prompts, or (a method that broke the tiny model, as KTO does on some seeds) said why not
            summary = json.loads((demo / "results" / "probing" / f"R6+{method}" / "summary.json").read_text())
            if "not_probed" in summary:
                assert summary["not_probed"].startswith(f"{method}: the ")
            else:
                assert 0.0 <= summary["transfer"][method]["peak_auroc"] <= 1.0
                assert f"probing/R6+{method}/probe_layer_auroc.png" in page
        assert "Own-model mean AUROC (R6 prompts)" in beyond and "SFT→X peak transfer (R6 prompts)" in beyond
        joined = subprocess.run(
            [sys.executable, "-m", "sycorec", "compare", "sft", "kto", "--join", "--json"],
            cwd=demo, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert joined.returncode == 0, joined.stderr[-3000:]
        report = json.loads(joined.stdout)
        deltas = {r["metric"]: r for r in report["metrics"]}
        assert deltas["answer_sycophancy_rate"]["kto"] == _metrics(demo, "kto")["answer_sycophancy_rate"]
        corrected = report["corrected_errors"]["all"]
        assert corrected["n"] > 0 and (corrected["fraction"] is None or 0.0 <= corrected["fraction"] <= 1.0)
    finally:
        subprocess.run(["git", "checkout", "-q", "HEAD", "--", "."], cwd=demo, check=True)
        _dvc(demo, "checkout", "-q", "-f")
