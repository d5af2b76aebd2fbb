"""A preference method is a row of the method table (params train.<method>): adding one is a params change only.

The test adds KTO and ORPO (TRL 0.29.1) to a temporary run's params, trains each on the tiny model through the same
stage function the CLI calls, and runs generate, judge (rule judge) and score on it: no code or package file changes.
"""

from __future__ import annotations

import pytest

from eval_support import write_manifests
from sycorec.config import validate
from sycorec.errors import ConfigError
from sycorec.io import read_json
from sycorec.paths import metrics_path
from train_support import REPO, inside_run_root, tiny_config

pytestmark = pytest.mark.slow  # trains two methods and evaluates them on the tiny model

torch = pytest.importorskip("torch")

SMALL = {
    "learning_rate": 5e-3,
    "num_train_epochs": 1,
    "per_device_train_batch_size": 8,
    "save_steps": 2,
    "eval_every_steps": 2,
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    with inside_run_root(tmp_path_factory.mktemp("methods") / "run") as path:
        yield path


def with_methods(root, *extra: str):
    cfg = tiny_config(root)
    methods = [*cfg.train.preference.methods, *extra]
    return tiny_config(
        root,
        models=[*cfg.models, *extra],
        train={"preference": {"methods": methods}, **dict.fromkeys(extra, SMALL)},
    )


def test_the_study_runs_its_three_methods_and_the_table_has_more():
    cfg = tiny_config(REPO)  # the committed params with the tiny profile
    assert cfg.train.preference.methods == ["dpo", "simpo", "ipo"]
    assert {"kto", "orpo"} <= set(cfg.train.methods)


def test_a_method_must_be_a_row_and_evaluated(run):
    raw = tiny_config(run).model_dump(mode="json")
    raw["train"]["preference"]["methods"].append("xpo")
    with pytest.raises(ConfigError, match=r"xpo has no row train\.xpo"):
        validate(raw)
    raw["train"]["preference"]["methods"][-1] = "kto"
    with pytest.raises(ConfigError, match="kto is trained but not evaluated"):
        validate(raw)


@pytest.mark.parametrize("method", ["kto", "orpo"])
def test_a_new_method_trains_and_is_evaluated_through_params_alone(run, method):
    from sycorec.evaluation.generate import generate_model
    from sycorec.evaluation.judge import judge_models
    from sycorec.evaluation.score import score_model
    from sycorec.train.preference import train_preference
    from sycorec.train.sft import train_sft

    cfg = with_methods(run, method)
    if not (run / "outputs/models/sft/config.json").is_file():
        train_sft(cfg)
    result = train_preference(cfg, method)
    assert type(result.trainer).__name__ == {"kto": "KTOTrainer", "orpo": "ORPOTrainer"}[method]
    assert result.trainer.state.global_step >= 1
    losses = [e["loss"] for e in result.trainer.state.log_history if "loss" in e]
    assert losses and all(loss == loss for loss in losses)  # no NaN
    assert read_json(run / f"results/curves/{method}.json")["step"][0] == 0

    write_manifests(cfg)
    generate_model(cfg, method)
    judge_models(cfg, [method])
    metrics = score_model(cfg, method)
    assert read_json(metrics_path(cfg, method)) == metrics
    assert 0.0 <= metrics["answer_sycophancy_rate"] <= 1.0
