"""The fact files: each loads into its typed model whole, and a misspelt key is one error naming the file and key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pydantic import TypeAdapter

from sycorec import facts
from sycorec.errors import ConfigError

# file -> (its cached loader, its model, a key it must have)
FACT_FILES = {
    facts.WORLD_FILE: (facts.world, facts.WorldPhrases, "stated_answer_marker"),
    facts.SYNTH_WORLD_FILE: (facts.synth_world, facts.SynthWorld, "neutral_syllables"),
    facts.STUDY_FILE: (facts.study, facts.Study, "mc_keys"),
    facts.JUDGE_PROMPTS_FILE: (facts.judge_prompts, facts.JudgePrompts, "no_sentiment"),
    facts.METRIC_REGISTRY_FILE: (facts.metric_registry, dict[str, facts.Metric], "higher_is_better"),
    facts.PROXY_FILE: (facts.proxy_spec, facts.Proxy, "batch_size"),
    facts.EVAL_DATASETS_FILE: (facts.registry, dict[str, facts.EvalDataset], "headline"),
}


@pytest.mark.parametrize("path", FACT_FILES, ids=lambda p: p.name)
def test_each_fact_file_loads_into_its_model_whole(path: Path) -> None:
    loader, kind, _ = FACT_FILES[path]
    assert loader() is loader()  # read once
    # Nothing dropped, renamed, reordered or coerced: readers (and the rule judge's cache identity, a hash of
    # study.yaml's rule_judge) see exactly what the file says.
    loaded = TypeAdapter(kind).dump_python(loader(), by_alias=True, exclude_unset=True)
    assert json.dumps(loaded) == json.dumps(yaml.safe_load(path.read_text(encoding="utf-8")))


@pytest.mark.parametrize("path", FACT_FILES, ids=lambda p: p.name)
def test_a_misspelt_key_is_one_error_naming_file_and_key(path: Path, tmp_path: Path) -> None:
    _, kind, key = FACT_FILES[path]
    bad = tmp_path / path.name
    bad.write_text(path.read_text(encoding="utf-8").replace(f"{key}:", f"{key}s:", 1), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        facts.load_facts(bad, kind)
    message = str(info.value)
    assert message.startswith(f"{bad}: ") and f"{key}s: unknown key" in message and "\n" not in message
