"""The organism's seed sweep: readings of a run, directions, margins from the spread, the record file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sycorec.demo import sweep
from sycorec.report import sweep_record


def _run(sft_answer: float, dpo_answer: float, flip_ff: float = 0.5) -> dict:
    run = {m: {k: 0.2 for k in sweep_record.READINGS} for m in sweep_record.MODELS}
    run[sweep_record.CONTROL] = {"probe_peak_auroc": 0.5}
    run["sft"].update(answer_sycophancy_rate=sft_answer, flip_rate_free_form=flip_ff)
    run["dpo"]["answer_sycophancy_rate"] = dpo_answer
    return run


def _record(paths: dict[str, list[dict]]) -> dict:
    return {"paths": {p: {"runs": {str(42 + i): r for i, r in enumerate(runs)}} for p, runs in paths.items()}}


def _by_name(record: dict) -> dict:
    return {d["direction"]: d for d in sweep_record.direction_summary(record)}


def test_margin_is_mean_minus_two_sd_rounded_down_over_all_runs():
    runs = [_run(0.5 + 0.01 * i, 0.2) for i in range(5)]
    record = _record({"avx2": runs[:3], "default": runs[3:]})
    d = _by_name(record)["answer_sycophancy_rate: sft > base"]
    deltas = [0.3 + 0.01 * i for i in range(5)]
    mean = sum(deltas) / 5
    sd = (sum((x - mean) ** 2 for x in deltas) / 4) ** 0.5
    assert d["change"]["mean"] == pytest.approx(mean) and d["change"]["sd"] == pytest.approx(sd)
    assert d["margin"] == pytest.approx(int((mean - 2 * sd) * 100) / 100)
    assert d["per_path"] == {"avx2": {"holds": 3, "runs": 3}, "default": {"holds": 2, "runs": 2}}
    assert d["asserted"]


def test_a_direction_that_fails_in_two_of_five_seeds_is_not_asserted():
    runs = [_run(0.5, 0.2), _run(0.5, 0.2), _run(0.5, 0.2), _run(0.5, 0.6), _run(0.5, 0.6)]
    d = _by_name(_record({"avx2": runs}))["answer_sycophancy_rate: sft > dpo"]
    assert d["per_path"]["avx2"] == {"holds": 3, "runs": 5}
    assert not d["asserted"]
    assert "answer_sycophancy_rate: sft > dpo" not in sweep_record.margins(_record({"avx2": runs}))


def test_a_wide_spread_is_not_asserted_even_when_every_seed_holds():
    runs = [_run(0.21, 0.2), _run(0.9, 0.2), _run(0.25, 0.2), _run(0.8, 0.2), _run(0.22, 0.2)]
    d = _by_name(_record({"avx2": runs}))["answer_sycophancy_rate: sft > base"]
    assert d["per_path"]["avx2"]["holds"] == 5
    assert d["margin"] is None and not d["asserted"]


def test_one_miss_is_allowed_on_a_three_seed_path():
    good, bad = _run(0.6, 0.2), _run(0.6, 0.7)
    record = _record({"avx2": [good] * 5, "default": [good, good, bad]})
    d = _by_name(record)["answer_sycophancy_rate: sft > dpo"]
    assert d["per_path"]["default"] == {"holds": 2, "runs": 3}
    assert d["asserted"] is (d["margin"] is not None)


def test_add_runs_merges_paths_and_markdown_lists_every_direction(tmp_path):
    target = tmp_path / "sweep.json"
    sweep.add_runs(target, "avx2", {42: _run(0.5, 0.2), 43: _run(0.55, 0.25)})
    record = sweep.add_runs(target, "default", {42: _run(0.52, 0.2)})
    assert json.loads(target.read_text()) == record
    assert set(record["paths"]) == {"avx2", "default"} and set(record["paths"]["avx2"]["runs"]) == {"42", "43"}
    table = sweep_record.markdown(record)
    assert "3 runs" in table
    for direction in sweep_record.DIRECTIONS:
        assert f"| {direction.name} |" in table


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_read_run_takes_base_proxy_from_step_zero_of_sft(tmp_path):
    for i, model in enumerate(sweep_record.MODELS):
        _write(tmp_path / "metrics" / f"{model}.json", {"answer_sycophancy_rate": 0.1 * i, "flip_rate": 0.3})
        _write(
            tmp_path / "metrics_detail" / f"{model}.json",
            {"are_you_sure": {"by_format": {"free_form": {"flip_rate": 0.05 * i}}}},
        )
    for i, model in enumerate(("sft", *sweep_record.RECOVERY)):
        _write(tmp_path / "curves" / f"{model}.json", {"step": [0, 10], "sycophancy_gap": [0.01 * i, 0.1 * i]})
    _write(tmp_path / "probing" / "R6" / "per_model.json", {"sft": {"peak_auroc": 0.9}, "base": {"peak_auroc": 0.7}})
    _write(tmp_path / "probing" / "R6" / "control.json", {"overall_mean": 0.48})
    run = sweep.read_run(tmp_path)
    assert run["sft"]["probe_peak_auroc"] == 0.9 and run["dpo"]["probe_peak_auroc"] is None
    assert sweep_record.Direction("probe_peak_auroc", "sft", sweep_record.CONTROL).delta(run) == pytest.approx(0.42)
    assert run["base"]["proxy_gap"] == 0.0 and run["dpo"]["proxy_gap"] == pytest.approx(0.1)
    assert run["sft"]["answer_sycophancy_rate"] == pytest.approx(0.1)
    assert run["simpo"]["flip_rate_free_form"] == pytest.approx(0.2)


def test_readme_shows_the_committed_record():
    root = Path(__file__).resolve().parents[1]
    record = json.loads((root / "code" / "sycorec" / "report" / "tiny_sweep.json").read_text())
    readme = (root / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- sweep:begin -->\n", 1)[1].split("<!-- sweep:end -->", 1)[0]
    assert block == sweep_record.markdown(record)
    assert sweep_record.margins(record), "the record asserts no direction"


def test_a_failed_run_counts_as_a_miss_and_is_listed():
    good = _run(0.6, 0.2)
    record = _record({"avx2": [good] * 5, "default": [good, good, {sweep_record.FAILED: "train_base below its gate"}]})
    d = _by_name(record)["answer_sycophancy_rate: sft > base"]
    assert d["per_path"]["default"] == {"holds": 2, "runs": 3}
    assert len(sweep_record.all_runs(record)) == 7
    assert "- default seed 44: train_base below its gate" in sweep_record.markdown(record)
