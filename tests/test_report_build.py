"""`sycorec report build`: tables (files, rows, columns, CI cells, n/a), examples, per-sample join, errata,
figures, provenance manifest and timings, on a hand-made full set of inputs."""

from __future__ import annotations

import csv
import json
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from report_fixtures import make_world
from sycorec.cli import main
from sycorec.config import load_config
from sycorec.errors import MissingInputError
from sycorec.report.build import build_report
from sycorec.report.diff import expected_layout
from sycorec.report.errata import build_errata, load_errata
from sycorec.report.results import Results, load_results
from sycorec.report.tables import build_tables, fmt_ci, load_spec, pick_example

SPEC = load_spec()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_world(tmp_path_factory.mktemp("world"))
    build_report(load_config(root / "params.yaml"), root=root)
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_table_is_written_with_its_rows_and_columns(built: Path) -> None:
    for post, specs in SPEC["tables"].items():
        for spec in specs:
            stem = built / "results" / "tables" / post / spec["id"]
            assert stem.with_suffix(".md").is_file(), stem
            cells = read_csv(stem.with_suffix(".csv"))
            rows, columns = expected_layout(spec)
            assert {c["column"] for c in cells} == set(columns), spec["id"]
            if rows is not None:
                assert list(dict.fromkeys(c["row"] for c in cells)) == rows, spec["id"]
            # the fixture is complete: no cell may be n/a
            assert all(c["display"] != "n/a" for c in cells), [c for c in cells if c["display"] == "n/a"]
    assert json.loads((built / "results" / "tables" / "missing.json").read_text()) == {}


def test_post4_behaviour_cells_show_value_and_ci(built: Path) -> None:
    cells = {(c["row"], c["column"]): c for c in read_csv(built / "results/tables/post4/behaviour.csv")}
    agg = cells[("Aggregate sycophancy", "+ GRPO")]
    assert agg["display"] == "0.169 [0.15, 0.19]"
    assert float(agg["value"]) == pytest.approx(0.169)
    assert (float(agg["ci_lower"]), float(agg["ci_upper"])) == pytest.approx((0.149, 0.189))
    assert agg["path"] == "metrics.grpo_v3.aggregate_sycophancy"
    # no CI in the inputs for the gap: the bare value
    assert cells[("Answer sycophancy gap", "+ IPO")]["display"] == "-0.035"
    md = (built / "results/tables/post4/behaviour.md").read_text()
    assert "| Metric | Baseline | + SFT | + DPO | + SimPO | + IPO | + GRPO |" in md
    assert "| Flip rate | 0.259 [0.24, 0.28] |" in md


def test_fmt_ci_formats() -> None:
    assert fmt_ci(0.3124, (0.291, 0.334), "f3") == "0.312 [0.29, 0.33]"
    assert fmt_ci(0.93, (0.9, 0.96), "pct") == "93% [90, 96]"
    assert fmt_ci(7.0, None, "int") == "7"


def test_probe_tables_use_peak_layer_ci_p_values_and_text(built: Path) -> None:
    ranking = {
        (c["row"], c["column"]): c["display"] for c in read_csv(built / "results/tables/post4/transfer_ranking.csv")
    }
    # peak AUROC with the bootstrap CI of its peak layer
    assert ranking[("GRPO", "SFT→X peak transfer")] == "0.665 [0.57, 0.77]"
    assert ranking[("GRPO", "Corrected p")] == "0.040"
    assert ranking[("IPO", "Published interpretation")] == "Pattern gone"
    methods = {
        (c["row"], c["column"]): c["display"] for c in read_csv(built / "results/tables/post4/method_comparison.csv")
    }
    assert methods[("DPO", "Transfer")] == "0.784 [0.68, 0.88] (p=0.005)"
    assert methods[("GRPO", "Online generation")] == "Yes"
    ablation = {(c["row"], c["column"]): c["display"] for c in read_csv(built / "results/tables/post4/ablation.csv")}
    assert ablation[("IPO", "Recovery")] == "38%"
    relearn = read_csv(built / "results/tables/post1/relearning.csv")
    assert [r["row"] for r in relearn if r["column"] == "DPO syc gap"][:3] == ["0", "5", "10"]


def test_examples_and_per_sample_join(built: Path) -> None:
    curling = (built / "results/tables/post2/example_curling.md").read_text()
    assert "House, Hogline, Hacks" in curling and "published question" in curling
    assert "\\|" in curling  # a pipe inside a response is escaped, not a column break
    # no Gaborone question in the fixture: the fallback rule picks the 2nd item with DPO wrong and SimPO right
    gaborone = read_csv(built / "results/tables/post2/example_gaborone.csv")
    assert "fallback rule" in (built / "results/tables/post2/example_gaborone.md").read_text()
    assert {c["display"] for c in gaborone if c["column"] == "Verdict"} == {"incorrect", "correct"}
    assert "item answer-001" in (built / "results/tables/post2/example_gaborone.md").read_text()
    join = {c["row"]: c["display"] for c in read_csv(built / "results/tables/post2/per_sample_join.csv")}
    # fixture: 10 items; SFT wrong on 0-7; SimPO right on 0-5 and 9; base and DPO wrong on 0-3
    assert list(join.values()) == ["10", "8", "75%", "4"]


def test_errata_rows(built: Path) -> None:
    cells = read_csv(built / "results/tables/errata.csv")
    ids = list(dict.fromkeys(c["row"] for c in cells))
    assert ids == [str(i) for i in range(1, 25)]
    this_run = {c["row"]: c["display"] for c in cells if c["column"] == "This run"}
    assert this_run["1"] == "mean 0.679 / peak 0.784"
    assert this_run["11"] == "mean 0.508 / std 0.023"
    assert this_run["18"] == "RM train 2912 / RM val 324 / DPO train 3074"
    assert this_run["19"] == "KL beta 0.04"
    md = (built / "results/tables/errata.md").read_text()
    assert "| id | What | Version A (source) | Version B (source) | This run | Note |" in md


def test_errata_file_lists_the_twenty_inconsistencies_then_the_as_run_defects() -> None:
    entries = load_errata()
    assert [e["id"] for e in entries] == list(range(1, 25))
    assert all(e["a"]["source"] and e["b"]["source"] and e["this_run"] for e in entries)
    # each as-run defect names the one `dvc exp run -S` param that corrects it
    assert all("dvc exp run -S" in e["note"] for e in entries[20:23])
    # a suspected defect that the pinned libraries do not have names the test that pins it
    assert "tests/test_grpo_rollout.py" in entries[23]["b"]["source"]


def test_figures_png_and_pdf(built: Path) -> None:
    out = built / "results" / "figures" / "report"
    for fig in SPEC["figures"]:
        for suffix in ("png", "pdf"):
            path = out / f"{fig['id']}.{suffix}"
            assert path.stat().st_size > 1000, path
    assert (out / "post4_probe_summary.png").read_bytes()[:4] == b"\x89PNG"


def test_manifest_and_timings(built: Path) -> None:
    manifest = json.loads((built / "results" / "manifest.json").read_text())
    assert manifest["profile"] == "full"
    assert len(manifest["params_sha256"]) == 64
    assert set(manifest["environment"]) >= {"git", "lock_sha256", "versions", "hardware", "image_digest"}
    pinned = load_config(built / "params.yaml").base_model.revision
    assert manifest["revisions"]["base_model"] == {"name": "Qwen/Qwen3-8B", "revision": pinned}
    assert manifest["revisions"]["data"]["sycophancy_eval"]["commit"]
    assert manifest["inputs"]["raw"]["dir"] == "data/raw"
    assert manifest["inputs"]["raw"]["manifest"]["files"]
    assert manifest["inputs"]["prepared"]["manifest"]["rows"]["rm_val.jsonl"] == 324
    assert "results/tables/post4/behaviour.csv" in manifest["outputs"]
    assert all(len(h) == 64 for h in manifest["outputs"].values())
    timings = json.loads((built / "results" / "timings.json").read_text())
    assert timings == {"stages": {"score@base": 1.5, "train_sft": 2.25}, "total_seconds": 3.75}


def test_results_page_without_models_beyond_the_study(built: Path) -> None:
    """The study's models alone: the page, and no beyond-the-study section (tests/test_report_page.py: with one)."""
    html = (built / "results" / "index.html").read_text(encoding="utf-8")
    assert 'id="post4-behaviour"' in html and 'id="errata"' in html and 'id="provenance"' in html
    assert 'id="beyond"' not in html
    assert not (built / "results" / "tables" / "beyond_study.csv").exists()


# Timed commands no DVC stage runs: `make data` fetches what data.dvc records
OFF_DAG = {"data fetch"}


def _commands(group: click.Group, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    for name in group.list_commands(click.Context(group)):
        command = group.get_command(click.Context(group), name)
        if isinstance(command, click.Group):
            yield from _commands(command, f"{prefix}{name} ")
        elif command is not None:
            yield f"{prefix}{name}", command


def _parse(argv: list[str]) -> tuple[str, click.Command, dict[str, Any]]:
    """The path, command and parsed options of `sycorec argv`, without running it."""
    command: click.Command = main
    while argv[0].startswith("--"):  # root options (--gpus N)
        argv = argv[2:]
    path = []
    while isinstance(command, click.Group):
        path.append(argv.pop(0))
        command = command.get_command(click.Context(command), path[-1])
    return " ".join(path), command, command.make_context(path[-1], argv).params


def test_timings_use_dvc_stage_names(tmp_path: Path) -> None:
    """Every DVC stage's command records the stage's own name and every other timed command is off the DAG, so
    timings.json joins with `dvc dag` (with a model probed beyond the study, so that no foreach is empty)."""
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["models"].append("kto")
    params["probing"]["beyond"]["models"] = ["kto"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    Repo.init(str(tmp_path), no_scm=True)
    with Repo(str(tmp_path)) as repo:
        stages = {s.name: s.cmd for s in repo.index.stages if isinstance(s, PipelineStage)}
    timed = {path for path, command in _commands(main) if hasattr(command.callback, "stage_name")}
    staged = set()
    for name, cmd in stages.items():
        path, command, params = _parse(shlex.split(cmd)[1:])
        if path in timed:
            assert command.callback.stage_name(params) == name
            staged.add(path)
    assert timed - staged == OFF_DAG


def test_missing_inputs_give_na_cells_not_a_crash(tmp_path: Path) -> None:
    root = make_world(tmp_path)
    shutil.rmtree(root / "results" / "probing")
    (root / "results" / "metrics" / "ipo.json").unlink()
    cfg = load_config(root / "params.yaml")
    tables = {t.name: t for t in build_tables(SPEC, load_results(cfg, join=SPEC["join"], root=root))}
    behaviour = tables["post4/behaviour"]
    assert "metrics.ipo.aggregate_sycophancy" in behaviour.missing
    ipo = behaviour.columns.index("+ IPO")
    assert all(cells[ipo].display == "n/a" for _, cells in behaviour.rows)
    assert "n/a = input missing" in behaviour.markdown()
    assert all(c.display == "n/a" for _, cells in tables["post4/transfer_ranking"].rows for c in cells[:3])
    assert not tables["post4/reward_model"].missing
    errata = build_errata(load_errata(), load_results(cfg, root=root))
    assert "probing.R6.transfer.dpo.mean_auroc" in errata.missing


def test_cli_build_reports_missing_and_fails_without_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_world(tmp_path)
    monkeypatch.chdir(root)
    shutil.rmtree(root / "results" / "metrics")
    result = CliRunner().invoke(main, ["report", "build"])
    assert result.exit_code == 2
    assert "no metrics files" in result.output
    with pytest.raises(MissingInputError):
        load_results(load_config(root / "params.yaml"), root=root)


def test_key_path_language() -> None:
    res = Results(
        {
            "curves": {"c": {"step": [0, 5, 10], "gap": [0.3, 0.2, 0.25]}},
            "probing": {"R6": {"cosine": {"sft_vs_dpo": {"mean_cosine": 0.26}}}},
            "train": {"g": {"reward_mean": 1.8, "flag": True}},
        }
    )
    assert res.get("curves.c.step=5.gap") == 0.2
    assert res.get("curves.c.step=7.gap") is None
    assert (res.get("curves.c.gap.min"), res.get("curves.c.gap.last"), res.get("curves.c.gap.1")) == (0.2, 0.25, 0.2)
    assert res.get("probing.R6.cosine.dpo_vs_sft.mean_cosine") == 0.26
    assert res.get("train.g.final_reward_mean|train.g.reward_mean") == 1.8
    assert res.number("train.g.flag") is None  # a bool is not a number
    assert res.get("train.missing.x") is None and res.get("curves.c.gap.9") is None


def test_example_rule_relaxes_when_nothing_fits(tmp_path: Path) -> None:
    rows = {  # item → (dpo, simpo) verdicts: no item has DPO wrong and SimPO right
        "a": ("correct", "correct"),
        "b": ("correct", "incorrect"),
    }
    for k, model in enumerate(("dpo", "simpo")):
        lines = [
            {"item_id": i, "dataset": "answer", "template": "suggest_incorrect", "question": f"Q {i}", "verdict": v[k]}
            for i, v in rows.items()
        ]
        (tmp_path / f"{model}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    spec = next(s for s in SPEC["tables"]["post2"] if s["id"] == "example_gaborone")
    picked = pick_example(Results({}, verdicts_dir=tmp_path), spec)
    assert picked == {"item_id": "a", "rule": "relaxed rule: only the `correct` models checked"}
    assert pick_example(Results({}, verdicts_dir=tmp_path / "none"), spec) is None


@pytest.mark.slow  # builds the whole tiny report
def test_tiny_tables_show_the_seed_sweeps_range_and_the_worlds_limits(tmp_path: Path) -> None:
    root = make_world(tmp_path)
    runs = {
        str(s): {m: {"answer_sycophancy_rate": 0.1 * s} for m in ("base", "sft", "dpo", "ipo", "simpo")} for s in (1, 2)
    }
    for run in runs.values():
        run["control"] = {}
    sweep_file = root / "code" / "sycorec" / "report" / "tiny_sweep.json"
    sweep_file.parent.mkdir(parents=True)
    sweep_file.write_text(json.dumps({"paths": {"avx2": {"runs": runs}}}))
    build_report(load_config(root / "params.yaml", "tiny"), root=root)
    md = (root / "results/tables/post1/behaviour.md").read_text()
    cells = {(c["row"], c["column"]): c for c in read_csv(root / "results/tables/post1/behaviour.csv")}
    assert cells[("Answer sycophancy rate", "+ SFT")]["display"].endswith(" seeds 0.100–0.200")
    assert " seeds " not in cells[("Flip rate", "+ SFT")]["display"]  # the sweep has no flip rate here
    assert "seed sweep" in md and "cannot show post 1's spread of SFT to feedback" in md
    assert " seeds 0.100–0.200" in (root / "results" / "index.html").read_text(encoding="utf-8")
    (tmp_path / "full").mkdir()
    full = make_world(tmp_path / "full")
    build_report(load_config(full / "params.yaml"), root=full)
    assert "seeds" not in (full / "results/tables/post1/behaviour.md").read_text()
