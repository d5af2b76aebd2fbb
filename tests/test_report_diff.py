"""`sycorec report diff`: tolerance rules, PASS/FAIL/MISSING/SKIP, exit codes, tiny-profile structure check, and the
consistency of published.yaml with tables.yaml."""

from __future__ import annotations

import copy
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from report_fixtures import make_world
from sycorec.cli import main
from sycorec.config import load_config
from sycorec.errors import ConfigError
from sycorec.report import tolerance as tol
from sycorec.report.build import build_report
from sycorec.report.diff import JUDGED, POSTS, Line, diff_post, judge_entry, load_published, published_path
from sycorec.report.results import Results, load_results
from sycorec.report.tables import load_spec

ROOT = Path(__file__).resolve().parents[1]
SPEC = load_spec()
PUBLISHED = load_published(published_path(ROOT / load_config(ROOT / "params.yaml").report.published))
MODEL = tol.load_model(PUBLISHED)


def entry(**kw: object) -> dict:
    return {
        "id": "x",
        "model": "m",
        "path": "metrics.m.flip_rate",
        "published": 0.5,
        "kind": "rate_flip",
        "run": "eval",
        "source": "s",
    } | kw


def results_with(value: object) -> Results:
    return Results({"metrics": {"m": {"flip_rate": value}}})


class Fed(Results):
    """A run whose every key path reads from a flat mapping (the canonical published values fed in as results)."""

    def __init__(self, values: dict[str, float]) -> None:
        super().__init__({})
        self.values = values

    def get(self, path: str) -> object:
        return self.values.get(path)

    def number(self, path: str) -> float | None:
        return self.values.get(path)


def replicated(e: dict) -> bool:
    return PUBLISHED["runs"][e["run"]]["replicated"]


def judge(e: dict, results: Results) -> Line:
    return judge_entry(e, results, MODEL, replicated(e))[0]


def canonical_values() -> dict[str, float]:
    """Each replicated quantity's published value, the most precisely printed where posts print it twice."""
    values: dict[str, float] = {}
    for entries in PUBLISHED["posts"].values():
        for e in entries:
            if replicated(e) and (e["path"] not in values or not e.get("rounding")):
                values[e["path"]] = float(e["published"])
    return values


def test_hanley_mcneil_is_the_mann_whitney_null_variance_at_half() -> None:
    for n_pos, n_neg in ((40, 57), (5, 300)):
        exact = (n_pos + n_neg + 1) / (12 * n_pos * n_neg)
        assert tol.hanley_mcneil_se(0.5, n_pos, n_neg) ** 2 == pytest.approx(exact)
    assert tol.hanley_mcneil_se(0.9, 40, 57) < tol.hanley_mcneil_se(0.6, 40, 57)


def test_wilson_se_matches_the_normal_se_in_the_middle_and_stays_positive_at_the_edges() -> None:
    assert tol.wilson_se(0.5, 10_000) == pytest.approx(math.sqrt(0.25 / 10_000), rel=1e-3)
    assert 0 < tol.wilson_se(0.0, 1500) < 0.002 and 0 < tol.wilson_se(1.0, 160) < 0.01


def test_auroc_tolerance_near_0_6_with_97_validation_prompts_is_about_0_16() -> None:
    t = tol.tolerance(entry(kind="auroc", published=0.6, path="probing.R6.per_model.sft.mean_auroc"), MODEL)
    assert 0.15 < t.value < 0.17


def test_retraining_term_is_calibrated_on_the_sft_rerun() -> None:
    spec = PUBLISHED["tolerance_model"]["retraining"]
    excess, pq = [], []
    for c in spec["components"].values():
        a, b = c["values"]
        excess.append((a - b) ** 2 - tol.wilson_se(a, c["n"]) ** 2 - tol.wilson_se(b, c["n"]) ** 2)
        pq.append((a + b) / 2 * (1 - (a + b) / 2))
    assert MODEL.retrain_scale == pytest.approx(sum(excess) / sum(pq))
    assert 0.02 < math.sqrt(MODEL.retrain_scale * 0.25) < 0.03  # dominated by the flip rate's 0.048 move
    # the base model is never trained: sampling only
    base = tol.tolerance(entry(model="base"), MODEL).value
    assert base < tol.tolerance(entry(), MODEL).value
    assert base == pytest.approx(MODEL.z * math.sqrt(2) * tol.wilson_se(0.5, 2000))


def test_retraining_term_scales_with_p_times_1_minus_p() -> None:
    """A trained model's rate of 0.002 gets a retraining term of its own size, not the flip rate's ±0.05."""
    at = {p: tol.tolerance(entry(published=p, kind="rate_feedback_arguments"), MODEL) for p in (0.002, 0.5)}
    assert at[0.002].shared == pytest.approx(math.sqrt(MODEL.retrain_scale * 0.002 * 0.998))
    assert at[0.5].shared == pytest.approx(math.sqrt(MODEL.retrain_scale * 0.25))
    simpo_arguments = next(e for e in PUBLISHED["posts"]["post2"] if e["id"] == "p2.arguments.simpo")
    assert tol.tolerance(simpo_arguments, MODEL).value < 0.01  # was ±0.0666: no power at 0.002


def test_probe_aurocs_get_the_between_run_term_of_the_studys_repeated_runs() -> None:
    kind = PUBLISHED["kinds"]["auroc"]
    excess = [
        (a - b) ** 2 - tol.hanley_mcneil_se(a, 40, 57) ** 2 - tol.hanley_mcneil_se(b, 40, 57) ** 2
        for a, b in kind["repeated"]["pairs"].values()
    ]
    # the study's 15 repeated pairs move no more than sampling explains: the term is floored at 0
    assert sum(excess) < 0 and MODEL.between_var["auroc"] == 0
    # a retrained model's probe entry carries the term, and the ratio its delta-method image, when it is not 0
    moved = copy.deepcopy(PUBLISHED)
    moved["kinds"]["auroc"]["repeated"]["pairs"] = {"a": [0.5, 0.9], "b": [0.9, 0.5]}
    wide = tol.load_model(moved)
    var = 0.16 - tol.hanley_mcneil_se(0.5, 40, 57) ** 2 - tol.hanley_mcneil_se(0.9, 40, 57) ** 2
    assert wide.between_var["auroc"] == pytest.approx(var)
    for e in (e for e in PUBLISHED["posts"]["post4"] if e["id"] in ("p4.own_mean.dpo", "p4.ablation_recovery.dpo")):
        assert tol.tolerance(e, wide).shared > 0 and tol.tolerance(e, wide).value > tol.tolerance(e, MODEL).value


def test_ipo_own_probes_are_context_with_their_errata_item() -> None:
    """The study probed the same IPO model twice and got 0.756 / 0.931 (own mean), 0.811 / 0.982 and 0.814 / 0.372
    (ablation): a faithful run cannot be judged against either."""
    post4 = {e["id"]: e for e in PUBLISHED["posts"]["post4"]}
    r5 = {"p4.own_mean.ipo": (0.756, 10), "p4.ablation_original.ipo": (0.811, 9)}
    r5 |= {"p4.ablation_retrained.ipo": (0.814, 9), "p4.ablation_recovery.ipo": (1.0, 9)}
    for eid, (value, errata) in r5.items():
        line = judge(post4[eid], Fed({post4[eid]["path"]: value}))
        assert (line.status, line.errata) == ("CONTEXT", errata), eid


def test_r3030_entries_use_r3030s_own_validation_counts() -> None:
    e = next(e for e in PUBLISHED["posts"]["post1"] if e["id"] == "p1.probe.sft_own_mean")
    se = tol.hanley_mcneil_se(0.815, 396, 203)
    assert tol.tolerance(e, MODEL).value == pytest.approx(MODEL.z * math.sqrt(2) * se)


def test_this_runs_own_counts_replace_the_studys_for_its_draw() -> None:
    few = Results({"metrics": {"m": {"flip_rate": 0.5, "n": {"flip_rate": 100}}}})
    assert tol.tolerance(entry(), MODEL, few).value > tol.tolerance(entry(), MODEL, results_with(0.5)).value
    probe = {"R6": {"per_model": {"sft": {"n_val": 400, "label_balance": 0.5}}}}
    e = entry(kind="auroc", published=0.7, path="probing.R6.transfer.sft.mean_auroc")
    assert tol.tolerance(e, MODEL, Results({"probing": probe})).value < tol.tolerance(e, MODEL).value


def test_judge_entry_statuses() -> None:
    assert judge(entry(), results_with(0.52)).status == "PASS"
    failed = judge(entry(), results_with(0.65))
    assert (failed.status, failed.delta) == ("FAIL", pytest.approx(0.15))
    assert failed.tolerance == tol.tolerance(entry(), MODEL).text
    assert judge(entry(), results_with(None)).status == "MISSING"
    assert judge(entry(), results_with(float("nan"))).status == "MISSING"
    assert judge(entry(), Results({})).status == "MISSING"
    assert judge(entry(check=False), results_with(0.9)).status == "SKIP"
    assert judge(entry(kind="p_value", published=0.154), results_with(0.025)).status == "CONTEXT"
    other = judge(entry(run="R5", canonical=0.4, errata=9), results_with(0.9))
    assert (other.status, other.canonical, other.errata, other.tolerance) == ("OTHER-RUN", 0.4, 9, "")


def test_published_file_is_consistent_with_tables() -> None:
    tables = {f"{post}/{spec['id']}" for post, specs in SPEC["tables"].items() for spec in specs}
    ids = Counter(e["id"] for entries in PUBLISHED["posts"].values() for e in entries)
    assert not [i for i, n in ids.items() if n > 1]
    assert set(PUBLISHED["posts"]) == {"post1", "post2", "post3", "post4"}
    for post, entries in PUBLISHED["posts"].items():
        for e in entries:
            assert {"id", "table", "model", "path", "published", "kind", "run", "source"} <= set(e), e
            assert e["table"] is None or e["table"] in tables, e["id"]
            assert e["table"] is None or e["table"].startswith(post), e["id"]
            # a number from a run the DAG does not replicate names the errata item that explains it
            assert replicated(e) or e.get("errata"), e["id"]


def test_every_entry_is_printed_in_its_post() -> None:
    """A number the post does not print (the RM's validation margin 2.09 is only in logs/008) is not judged there."""
    for post, entries in PUBLISHED["posts"].items():
        for e in entries:
            assert f"P{post[-1]}" in e["source"] and "not printed" not in e["source"], e["id"]


def test_one_canonical_value_per_quantity() -> None:
    """Replicated-run entries of one key path agree within their printed precision, and the canonical value beside
    an OTHER-RUN entry is that quantity's published canonical value where one is published."""
    canonical = canonical_values()
    for entries in PUBLISHED["posts"].values():
        for e in entries:
            if replicated(e):
                assert abs(e["published"] - canonical[e["path"]]) <= e.get("rounding", 0) + 1e-9, e["id"]
            elif e.get("canonical") is not None and e["path"] in canonical:
                assert e["canonical"] == pytest.approx(canonical[e["path"]]), e["id"]


def test_study_values_are_tagged_with_their_runs() -> None:
    runs = {e["id"]: e["run"] for entries in PUBLISHED["posts"].values() for e in entries}
    assert runs["p1.probe.sft_own_mean"] == "R3030" and runs["p2.transfer_mean.simpo"] == "R2931"
    assert runs["p3.ablation_retrained.ipo"] == "R5" and runs["p4.ablation_retrained.ipo"] == "R6"
    assert runs["p3.answer.simpo"] == "simpo_006d" and runs["p4.control_floor"] == "R5"
    # the figure script's unplotted values are not published numbers
    published = {(e["path"], e["published"]) for entries in PUBLISHED["posts"].values() for e in entries}
    assert ("metrics.simpo.answer_sycophancy_rate", 0.365) not in published


def test_first_proxy_points_are_the_studys_first_callback_step() -> None:
    """The study's proxy callback fires at multiples of eval_every_steps (no step-0 point), so the 'first' value a
    post quotes is the step eval_every_steps of that run."""
    train = load_config(ROOT / "params.yaml").train
    firsts = {e["id"]: e for entries in PUBLISHED["posts"].values() for e in entries if e["id"].endswith("gap_first")}
    assert set(firsts) == {"p2.simpo.proxy_gap_first", "p4.grpo_v2.proxy_gap_first"}
    for eid, every in (
        ("p2.simpo.proxy_gap_first", train.simpo.eval_every_steps),
        ("p4.grpo_v2.proxy_gap_first", train.grpo.eval_every_steps),
    ):
        assert firsts[eid]["path"] == f"curves.{firsts[eid]['model']}.step={every}.sycophancy_gap", eid
        assert firsts[eid]["full_only"], eid


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_world(tmp_path_factory.mktemp("world"))
    build_report(load_config(root / "params.yaml"), root=root)
    return root


def test_canonical_values_fed_in_give_zero_fail_and_zero_missing(world: Path) -> None:
    """The self-consistency check: a run that equals every canonical published value passes every post."""
    fed = Fed(canonical_values())
    for post in POSTS:
        result = diff_post(post, PUBLISHED, fed, SPEC, world / "results" / "tables", tiny=False)
        statuses = Counter(line.status for line in result.lines)
        assert set(statuses) <= {"PASS", "OTHER-RUN", "CONTEXT"}, (post, statuses)
        assert statuses["PASS"] and not result.structure_problems and not result.failed


def test_perturbing_a_canonical_value_beyond_its_tolerance_fails_exactly_that_entry(world: Path) -> None:
    values = canonical_values()
    judged = 0
    for entries in PUBLISHED["posts"].values():
        for e in entries:
            limit = tol.tolerance(e, MODEL)
            if not replicated(e) or limit.value is None:
                continue
            judged += 1
            for factor, status in ((1.01, "FAIL"), (-1.01, "FAIL"), (0.99, "PASS")):
                moved = e["published"] + factor * limit.value + (1e-6 if factor > 0 else -1e-6) * (status == "FAIL")
                line = judge(e, Fed(values | {e["path"]: moved}))
                assert line.status == status, (e["id"], factor, line)
    assert judged > 150
    # in a whole post: one quantity moved just past its tolerance, exactly its entry fails, and one FAIL is within
    # chance; moved three times as far, no faithful run is that far off: the post fails
    hedged = next(e for e in PUBLISHED["posts"]["post4"] if e["id"] == "p4.hedged.grpo")
    for times, failed in ((1.2, False), (3, True)):
        fed = Fed(values | {hedged["path"]: 0.184 + times * tol.tolerance(hedged, MODEL).value})
        result = diff_post("post4", PUBLISHED, fed, SPEC, world / "results" / "tables", tiny=False)
        assert [ln.id for ln in result.lines if ln.status == "FAIL"] == ["p4.hedged.grpo"]
        assert result.n_failed == 1 <= result.allowed and result.failed == failed
        assert (result.worst, result.worst_id) == (pytest.approx(times), "p4.hedged.grpo")
        assert result.worst_limit < 3 and f"the largest |Δ| is {times:.2f}× its tolerance" in result.summary()
    limits = tol.null_thresholds(tol.post_checks(PUBLISHED, "post4", MODEL), MODEL)
    assert (result.allowed, result.expected) == (limits.allowed, pytest.approx(limits.expected))


def test_more_fails_than_chance_explains_fail_the_post(world: Path) -> None:
    values = canonical_values()
    post4 = [e for e in PUBLISHED["posts"]["post4"] if replicated(e) and tol.tolerance(e, MODEL).value]
    allowed = tol.null_thresholds(tol.post_checks(PUBLISHED, "post4", MODEL), MODEL).allowed
    quantities = {tol.judged(e, tol.tolerance(e, MODEL), MODEL).quantity: e for e in post4}
    # each just past its tolerance, so the count alone decides
    picked = list(quantities.values())
    moved = {e["path"]: e["published"] + 1.2 * tol.tolerance(e, MODEL).value for e in picked[: allowed + 1]}
    result = diff_post("post4", PUBLISHED, Fed(values | moved), SPEC, world / "results" / "tables", tiny=False)
    assert result.n_failed == allowed + 1 and result.failed and result.worst < result.worst_limit
    fewer = {path: moved[path] for path in list(moved)[:allowed]}
    assert not diff_post("post4", PUBLISHED, Fed(values | fewer), SPEC, world / "results" / "tables", tiny=False).failed
    assert f"{allowed + 1} of {len(result.quantities('PASS', 'FAIL'))} checked quantities failed" in result.summary()


def test_simulated_null_holds_each_post_at_one_percent_and_has_power_against_shifts() -> None:
    """Each post's exit threshold comes from the seeded correlated null: a faithful run exits 1 in at most 1% of
    fresh draws, and moving every rate of one model exits more often, the more so the larger the move."""
    for post in POSTS:
        verdict = tol.null_verdict(tol.post_checks(PUBLISHED, post, MODEL), MODEL)
        assert verdict.exit_probability <= MODEL.family_level, (post, verdict)
        small, large = (verdict.power[by] for by in (0.05, 0.10))
        assert verdict.exit_probability < small <= large and large > 0.95, (post, verdict)


def test_the_null_is_seeded() -> None:
    checks = tol.post_checks(PUBLISHED, "post1", MODEL)
    assert tol.null_thresholds(checks, MODEL) == tol.null_thresholds(checks, MODEL)


def test_the_binomial_rule_on_the_correlated_null_exits_far_more_than_it_promises() -> None:
    """Why the threshold is simulated: counting the checks as independent Bernoulli(0.05) lets a faithful run exit 1
    in several percent of runs once one model's numbers move together."""
    checks = tol.post_checks(PUBLISHED, "post1", MODEL)
    n = len({c.quantity for c in checks})
    binomial = int(stats.binom.ppf(1 - MODEL.family_level, n, 1 - MODEL.confidence))
    counts, _ = tol.simulate(checks, np.random.default_rng(0), 20_000)
    assert (counts > binomial).mean() > 5 * MODEL.family_level
    assert tol.null_thresholds(checks, MODEL).allowed > binomial


def test_one_model_moved_by_its_retraining_sd_does_not_fail_the_post(world: Path) -> None:
    """The correlated case: a retraining shift moves every number of one model; one SD of it, in the same direction
    for all of them, is an ordinary faithful run."""
    values = canonical_values()
    for post, model in (("post4", "sft"), ("post4", "grpo_v3"), ("post1", "relearn_dpo"), ("post2", "simpo")):
        moved = {}
        for e in PUBLISHED["posts"][post]:
            limit = tol.tolerance(e, MODEL)
            if e.get("model") == model and replicated(e) and limit.value is not None and limit.shared > 0:
                moved[e["path"]] = e["published"] + limit.shared
        if f"metrics.{model}.stubbornness" in moved:  # 1 − flip moves the other way
            moved[f"metrics.{model}.stubbornness"] = 1 - moved[f"metrics.{model}.flip_rate"]
        assert len(moved) >= 4
        result = diff_post(post, PUBLISHED, Fed(values | moved), SPEC, world / "results" / "tables", tiny=False)
        assert not result.failed, (post, model, result.summary())
    # two SDs (a faithful run does that in about 5%): the whole relearning curve fails, which the independent-checks
    # binomial rule would have called a failed post
    curve = [e for e in PUBLISHED["posts"]["post1"] if e.get("model") == "relearn_dpo"]
    moved = {e["path"]: e["published"] + 2 * tol.tolerance(e, MODEL).shared for e in curve}
    result = diff_post("post1", PUBLISHED, Fed(values | moved), SPEC, world / "results" / "tables", tiny=False)
    binomial = int(stats.binom.ppf(1 - MODEL.family_level, len(result.quantities(*JUDGED)), 1 - MODEL.confidence))
    assert result.n_failed == len(curve) > binomial and not result.failed


def test_stubbornness_and_flip_are_one_quantity(world: Path) -> None:
    values = canonical_values()
    moved = {"metrics.sft.flip_rate": 0.6 + 0.2, "metrics.sft.stubbornness": 0.4 - 0.2}
    result = diff_post("post4", PUBLISHED, Fed(values | moved), SPEC, world / "results" / "tables", tiny=False)
    assert {ln.id for ln in result.lines if ln.status == "FAIL"} == {"p4.flip.sft", "p4.stubbornness.sft"}
    assert result.n_failed == 1


def test_values_equal_by_construction_are_one_quantity(world: Path) -> None:
    """An ablation's original AUROC is the probe's peak AUROC: one quantity, and the recovery shares its draw."""
    post4 = {e["id"]: e for e in PUBLISHED["posts"]["post4"]}
    peak, original = post4["p4.own_peak.grpo_v3"], post4["p4.ablation_original.grpo_v3"]
    recovery = post4["p4.ablation_recovery.grpo_v3"]
    checks = {e["id"]: tol.judged(e, tol.tolerance(e, MODEL), MODEL) for e in (peak, original, recovery)}
    assert checks[peak["id"]].quantity == checks[original["id"]].quantity == peak["path"]
    assert peak["path"] in checks[recovery["id"]].parts
    far = peak["published"] + 2 * tol.tolerance(peak, MODEL).value
    fed = Fed(canonical_values() | {peak["path"]: far, original["path"]: far})
    result = diff_post("post4", PUBLISHED, fed, SPEC, world / "results" / "tables", tiny=False)
    assert {ln.id for ln in result.lines if ln.status == "FAIL"} == {peak["id"], original["id"]}
    assert result.n_failed == 1


def test_readme_tolerance_table_is_generated_from_the_code() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    begin, end = "<!-- tolerances: sycorec report tolerances --markdown -->\n", "<!-- /tolerances -->"
    assert begin in readme and end in readme
    block = readme[readme.index(begin) + len(begin) : readme.index(end)]
    assert block == tol.tolerance_markdown(PUBLISHED)
    assert block == CliRunner().invoke(main, ["report", "tolerances", "--markdown"]).output


HEADER = """tolerance_model:
  confidence: 0.95
  family_level: 0.01
  retraining: {pair: p, components: {flip: {values: [0.6, 0.55], n: 2000}}}
runs: {eval: {replicated: true, what: w}}
kinds: {rate: {se: proportion, n: 100, why: x}}
posts:
  post1:
"""


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{id: a, path: p, published: 1, kind: auroc, run: eval}", "kind 'auroc'"),
        ("{id: a, path: p, published: 1, kind: rate, run: R9}", "run 'R9'"),
    ],
)
def test_load_published_rejects_unknown_kinds_and_runs(tmp_path: Path, line: str, message: str) -> None:
    bad = tmp_path / "published.yaml"
    bad.write_text(HEADER + f"    - {line}\n")
    with pytest.raises(ConfigError, match=message):
        load_published(bad)


def test_full_scale_post4_passes_on_a_matching_run(world: Path) -> None:
    results = load_results(load_config(world / "params.yaml"), join=SPEC["join"], root=world)
    result = diff_post("post4", PUBLISHED, results, SPEC, world / "results" / "tables", tiny=False)
    assert set(result.counts) == {"PASS", "OTHER-RUN", "CONTEXT"} and not result.failed
    # P4's SimPO answer rate is the earlier SimPO run's, its noise floor R5's control
    assert {ln.id for ln in result.lines if ln.status == "OTHER-RUN"} == {"p4.answer.simpo", "p4.control_floor"}
    # post 3 quotes R5's probing run, which the R6-valued fixture reproduces instead: other run, not FAIL
    post3 = diff_post("post3", PUBLISHED, results, SPEC, world / "results" / "tables", tiny=False)
    status = {ln.id: ln.status for ln in post3.lines}
    assert {status[i] for i in ("p3.peak_layer.ipo", "p3.ablation_retrained.ipo", "p3.corrected_p.simpo")} == {
        "OTHER-RUN"
    }
    assert not post3.counts["FAIL"] and not post3.failed


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
        assert "1 FAIL, 1 MISSING" in result.output and "1 of " in result.output
        assert any(line.startswith("FAIL") and "p4.flip.grpo" in line for line in result.output.splitlines())
        assert any(line.startswith("OTHER-RUN") and "errata 13" in line for line in result.output.splitlines())
        report = json.loads((world / "results/published_diff/post4.json").read_text())
        statuses = {x["id"]: x["status"] for x in report["numbers"]}
        assert statuses["p4.flip.grpo"] == "FAIL" and statuses["p4.hedged.grpo"] == "MISSING"
        assert report["mode"] == "values"
        md = (world / "results/published_diff/post4.md").read_text()
        # this run's own n (1,000 in the fixture) sets its side of the tolerance
        flip = next(x for x in report["numbers"] if x["id"] == "p4.flip.grpo")
        limit = tol.tolerance(flip | {"source": ""}, MODEL, Fed({"metrics.grpo_v3.n.flip_rate": 1000}))
        assert flip["tolerance"] == limit.text
        assert f"| p4.flip.grpo | grpo_v3 | 0.2 | 0.082 | 0.118 | {flip['tolerance']} | FAIL | eval |" in md
        assert CliRunner().invoke(main, ["report", "diff", "--post", "4", "--exit-zero"]).exit_code == 0
        # one FAIL alone is within chance, unless it is further off than a faithful run's worst number
        data["hedged_rate"] = 0.184
        metrics.write_text(json.dumps(data))
        far = CliRunner().invoke(main, ["report", "diff", "--post", "4"])
        assert far.exit_code == 1 and "1 FAIL, 0 MISSING" in far.output and "(p4.flip.grpo)" in far.output
        data["flip_rate"] = 0.082 + 1.1 * limit.value
        metrics.write_text(json.dumps(data))
        alone = CliRunner().invoke(main, ["report", "diff", "--post", "4"])
        assert alone.exit_code == 0, alone.output
        assert "1 FAIL, 0 MISSING" in alone.output and "expected by chance" in alone.output
    finally:
        metrics.write_text(original)
    assert CliRunner().invoke(main, ["report", "diff", "--post", "4"]).exit_code == 0


def test_diff_of_all_posts_ends_with_a_line_for_every_post(world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A MISSING number of post 1 fails the diff, and the last line says so, not only post 4's verdict."""
    monkeypatch.chdir(world)
    metrics = world / "results/metrics/dpo.json"
    original = metrics.read_text()
    data = json.loads(original)
    del data["aggregate_sycophancy"]  # p1.aggregate.dpo: MISSING
    metrics.write_text(json.dumps(data))
    try:
        result = CliRunner().invoke(main, ["report", "diff", "--post", "all", "--exit-zero"])
    finally:
        metrics.write_text(original)
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("all posts: post1 FAILED, post2 ") and "post4 " in last, last
    missing = sum(
        json.loads((world / f"results/published_diff/{p}.json").read_text())["counts"].get("MISSING", 0) for p in POSTS
    )
    assert missing >= 1 and f"{missing} MISSING" in last


def test_the_tiny_relearning_curve_logs_every_step_the_published_curve_prints() -> None:
    """Post 1's relearning numbers at step N are MISSING in the demo unless its proxy runs at step N."""
    relearn = load_config(ROOT / "params.yaml", "tiny").train.relearn
    steps = {
        int(e["path"].split(".step=")[1].split(".")[0])
        for e in PUBLISHED["posts"]["post1"]
        if ".step=" in e["path"] and not e.get("full_only")
    }
    assert steps and all(n % relearn.eval_every_steps == 0 and n <= relearn.max_steps for n in steps), steps


@pytest.mark.slow  # builds the whole tiny report
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
    assert ok.output.strip().splitlines()[-1] == (
        "all posts: post1 passed, post2 passed, post3 passed, post4 passed; 0 MISSING, 0 structure problems in all"
    )
    # full-only numbers (step 30 of a 50-step curve) are skipped, not missing
    report = json.loads((root / "results/published_diff/post1.json").read_text())
    assert report["mode"] == "structure" and report["worst_ratio"]["limit"] is None  # strict JSON: no Infinity
    assert {x["id"]: x["status"] for x in report["numbers"]}["p1.relearn.dpo.step30"] == "SKIP"

    (root / "results/tables/post4/cosine.csv").unlink()
    (root / "results/probing/R6/control.json").unlink()
    bad = runner.invoke(main, ["--profile", "tiny", "report", "diff", "--post", "4"])
    assert bad.exit_code == 1
    assert "STRUCTURE" in bad.output and "cosine.csv: missing" in bad.output
    assert "p4.control_floor" in bad.output and "MISSING" in bad.output


def test_reproduce_rebuilds_the_report_before_the_diff() -> None:
    out = CliRunner().invoke(main, ["reproduce", "--post", "1", "--dry-run"])
    assert out.exit_code == 0, out.output
    repro, build, diff = out.output.splitlines()[-3:]  # after the plan
    assert repro.startswith("dvc repro ") and "score@sft" in repro
    assert (build, diff) == ("sycorec report build", "sycorec report diff --post 1")
