"""The evaluation dataset registry: a dataset is added by data alone (a file, its registry entry, the params
selection), and a dataset the registry does not know is refused when the config loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from eval_support import FACTS, REPO, eval_config, save_tiny_model
from sycorec.cli import main
from sycorec.config import load_config
from sycorec.errors import ConfigError
from sycorec.facts import registry, schemas
from sycorec.io import read_json, write_jsonl

STUDY = "datasets: [answer, are_you_sure, feedback]"
# A workspace's own dataset: answer-schema rows, free-form replies, judged with the answer template.
ENTRY = {
    "capitals": {
        "file": "extra/capitals.jsonl",
        "schema": "answer",
        "mode": "free_form",
        "seen": False,
        "judge": {"template": "answer", "verdict": "answer"},
        "headline": False,
    }
}


def capitals_rows() -> list[dict]:
    """SycophancyEval answer rows: every fact under each of the four prompt templates the schema knows."""
    rows = []
    for question, right, wrong in FACTS:
        base = {"dataset": "trivia_qa", "question": question, "answer": [right]}
        base |= {"correct_answer": right, "incorrect_answer": wrong}
        for template in schemas()["answer"]["templates"]:
            content = template.format(question=question, correct_answer=right, incorrect_answer=wrong)
            prompt = [{"type": "human", "content": content}]
            rows.append({"prompt": prompt, "base": base, "metadata": {"prompt_template": template}})
    return rows


def select(root: Path, datasets: str, include: str = "[]") -> None:
    params = root / "params.yaml"
    text = params.read_text().replace(STUDY, f"datasets: {datasets}").replace("include: []", f"include: {include}")
    params.write_text(text)


def test_an_unknown_dataset_is_one_error_at_config_load(tmp_path):
    eval_config(tmp_path)
    select(tmp_path, "[answer, capitals]")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "params.yaml", "tiny")
    message = str(info.value)
    assert "evaluation.datasets" in message and "['capitals'] not in the dataset registry" in message
    assert "\n" not in message


def test_a_workspace_registry_cannot_take_a_headline_or_a_registered_name(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"answer": ENTRY["capitals"]}))
    with pytest.raises(ConfigError, match="evaluation dataset 'answer' is registered twice"):
        registry((extra,))
    headline = tmp_path / "headline.yaml"
    headline.write_text(yaml.safe_dump({"capitals": {**ENTRY["capitals"], "headline": True}}))
    with pytest.raises(ConfigError, match="a second headline dataset of verdict 'answer'"):
        registry((headline,))


@pytest.mark.slow  # synthesises the tiny world and runs four stages on a tiny model
def test_a_dataset_added_through_the_registry_alone_is_prepared_generated_judged_and_scored(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)  # a shared 2-core box: more threads spin against other jobs
    monkeypatch.chdir(tmp_path)
    eval_config(tmp_path)
    tiny = yaml.safe_load((REPO / "profiles/tiny.yaml").read_text())
    tiny["generation"].update(max_new_tokens=4, max_samples=12)  # sizes only: every dataset, fewer items
    (tmp_path / "profiles/tiny.yaml").write_text(yaml.safe_dump(tiny))
    (tmp_path / "my_datasets.yaml").write_text(yaml.safe_dump(ENTRY))
    select(tmp_path, "[answer, are_you_sure, feedback, capitals]", "[my_datasets.yaml]")
    runner = CliRunner()

    def run(*args: str) -> None:
        result = runner.invoke(main, ["--profile", "tiny", *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output

    run("data", "synth")
    write_jsonl(tmp_path / "data/synth/extra/capitals.jsonl", capitals_rows())
    run("data", "prepare")
    save_tiny_model(load_config("params.yaml", "tiny"), "base")
    for args in (["generate", "--model", "base"], ["judge", "--models", "base"], ["score", "--model", "base"]):
        run(*args)

    items = [json.loads(line) for line in Path("data/prepared/eval/capitals.jsonl").read_text().splitlines()]
    assert len(items) == 12 and {i["dataset"] for i in items} == {"capitals"}
    judged = [json.loads(line) for line in Path("outputs/eval/judgments/base/capitals.jsonl").read_text().splitlines()]
    assert {j["item_id"] for j in judged} == {i["item_id"] for i in items}
    # the rule judge read every prompt back out of the answer template: no parse failure
    assert all(j["parse_ok"] and j["verdict"] in ("correct", "incorrect", "hedged", "refused") for j in judged)
    detail = read_json("results/metrics_detail/base.json")
    section = detail["capitals"]["all"]["all"]
    assert section["n"] == 12 and section["parse_failures"] == 0
    rates = ("accuracy", "incorrect_rate", "hedged_rate", "refused_rate")
    assert sum(section[k] for k in rates) == pytest.approx(1.0)
    assert {"answer", "are_you_sure", "feedback", "parse_failures"} <= set(detail)
    assert detail["parse_failures"]["capitals"] == {t: 0 for t in {i["template"] for i in items}}
    verdicts = [json.loads(line) for line in Path("results/verdicts/base.jsonl").read_text().splitlines()]
    assert sum(v["dataset"] == "capitals" for v in verdicts) == 12
