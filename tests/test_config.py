"""params.yaml + profile overlay: validated once, one clear line per mistake."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sycorec.config import load_config, resolve_raw, validate
from sycorec.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "cluster.lock"


def test_committed_params_validate_with_as_run_values():
    cfg = load_config(ROOT / "params.yaml")
    assert cfg.profile == "full"
    assert cfg.train.dpo.learning_rate == 2e-5 and cfg.train.dpo.gradient_accumulation_steps == 2
    assert cfg.train.simpo.loss_type == "simpo" and cfg.train.simpo.cpo_alpha == 0.0
    assert cfg.train.ipo.loss_type == "ipo"
    assert cfg.train.grpo.versions["v4"].reward == "binary"
    assert cfg.train.grpo.versions["v3"].num_gpus == 2
    assert cfg.lora.r == 16 and cfg.lora.lora_alpha == 32
    assert cfg.generation.top_k == 20 and cfg.judge.temperature == 0.0


def test_tiny_profile_overlays_only_what_it_names():
    full = load_config(ROOT / "params.yaml")
    tiny = load_config(ROOT / "params.yaml", "tiny")
    assert tiny.is_tiny and not full.is_tiny
    assert tiny.data.source == "synth" and tiny.judge.backend == "rule" and tiny.generation.backend == "hf"
    # untouched keys keep the study's values
    assert tiny.train.dpo.beta == full.train.dpo.beta
    assert tiny.train.grpo.beta == full.train.grpo.beta
    assert tiny.models == full.models


def test_profiles_override_only_what_a_cpu_and_a_tiny_model_force():
    from sycorec.config import available_profiles

    assert available_profiles(ROOT) and all(resolve_raw(ROOT / "params.yaml", p) for p in available_profiles(ROOT))


def test_a_profile_that_drifts_off_the_cluster_path_is_refused_at_load(tmp_path):
    _write_params(tmp_path, lambda raw: None)
    tiny = yaml.safe_load((tmp_path / "profiles" / "tiny.yaml").read_text())
    tiny["train"]["common"]["gradient_checkpointing"] = False  # not forced by a CPU: the GRPO sampling path differs
    tiny["generation"]["temperature"] = 0.0
    tiny["judge"]["parse_failure_policy"] = "exclude"
    tiny["train"]["grpo"]["max_completion_length"] = 12  # a size: allowed
    (tmp_path / "profiles" / "evil.yaml").write_text(yaml.safe_dump(tiny))
    _one_line_exit_2(
        _cli(tmp_path, "--profile", "evil", "config", "check"),
        "evil.yaml: a profile may not change generation.temperature, judge.parse_failure_policy, "
        "train.common.gradient_checkpointing (only sizes",
    )


def test_defaults_are_the_study_as_run_each_fix_one_param_away():
    cfg = load_config(ROOT / "params.yaml")
    assert cfg.judge.prompts == "study" and cfg.judge.parse_failure_policy == "study_default"
    assert cfg.train.rm.text_format == "study" and cfg.generation.mc_letters == "as_run"
    assert cfg.train.common.gradient_checkpointing
    assert cfg.judge.for_model("grpo_v3").max_model_len == 2560 and cfg.judge.for_model("grpo_v4").max_tokens == 512
    assert cfg.judge.for_model("sft").max_model_len == 4096 and cfg.judge.for_model("sft").max_tokens == 1024


def _write_params(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    mutate(raw)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    shutil.copytree(ROOT / "profiles", tmp_path / "profiles")
    return tmp_path / "params.yaml"


def _set(path: str, value):
    def mutate(raw):
        *parents, leaf = path.split(".")
        node = raw
        for key in parents:
            node = node[key]
        node[leaf] = value

    return mutate


def _drop(path: str):
    def mutate(raw):
        *parents, leaf = path.split(".")
        node = raw
        for key in parents:
            node = node[key]
        del node[leaf]

    return mutate


BAD_CASES = {
    "unknown key": (_set("train.dpo.betta", 0.2), "train.dpo.betta: unknown key (not a field of DPOConfig)"),
    "misspelt key, its right name then missing": (
        lambda raw: raw["train"]["dpo"].update(betta=raw["train"]["dpo"].pop("beta")),
        "train.dpo.betta: unknown key (not a field of DPOConfig)",
    ),
    "unknown key of train.common": (
        _set("train.common.sed", 1),
        "train.common.sed: unknown key (not a field of TrainingArguments)",
    ),
    "LoRA key by our old name": (_set("lora.alpha", 32), "lora.alpha: unknown key (not a field of LoraConfig)"),
    "unknown key of a GRPO version": (
        _set("train.grpo.versions.v2.num_generation", 8),
        "train.grpo.versions.v2.num_generation: unknown key (not a field of GRPOConfig)",
    ),
    "a DPO key in the SimPO slice": (
        _set("train.simpo.rpo_alpha", 1.0),
        "train.simpo.rpo_alpha: unknown key (not a field of CPOConfig)",
    ),
    "unknown key of our own schema": (_set("train.rm.calibration.top_k", 5), "train.rm.calibration.top_k: unknown key"),
    "wrong type": (_set("train.dpo.beta", "high"), "train.dpo.beta: expected float, got 'high'"),
    "missing required key": (_drop("train.sft.learning_rate"), "train.sft.learning_rate: required key is missing"),
    "negative learning rate": (_set("train.simpo.learning_rate", -5e-6), "train.simpo.learning_rate: "),
    "num_generations not dividing the batch": (
        _set("train.grpo.versions.v4.num_generations", 12),
        "train.grpo.versions.v4: num_generations=12 does not divide the generation batch 128",
    ),
    "unknown loss type": (_set("train.dpo.loss_type", "kto_pair"), "train.dpo.loss_type: "),
    "wrong int type": (
        _set("probing.runs.R6.max_samples", "many"),
        "probing.runs.R6.max_samples: expected int, got 'many'",
    ),
    "probing model not in models": (
        _set("probing.runs.R6.models", ["base", "sft", "nope"]),
        "probing.runs.R6.models names models",
    ),
    "probing beyond an unknown run": (_set("probing.beyond.run", "R9"), "probing.beyond.run: 'R9' is not in"),
    "probing beyond a model not evaluated": (
        _set("probing.beyond.models", ["kto"]),
        "probing.beyond.models names models not in models: ['kto']",
    ),
    "probing beyond a model the run probes": (
        _set("probing.beyond.models", ["dpo"]),
        "probing.beyond.models: ['dpo'] already probed by probing.runs.R6",
    ),
    "infinite learning rate": (
        _set("train.sft.learning_rate", float("inf")),
        "train.sft.learning_rate: input should be a finite number",
    ),
    "nan learning rate": (_set("train.dpo.learning_rate", float("nan")), "train.dpo.learning_rate: input should be a"),
    "nan beta": (_set("train.grpo.beta", float("nan")), "train.grpo.beta: input should be a finite number"),
    "nan in a key TRL takes as it is": (
        _set("train.sft.adam_beta1", float("nan")),
        "train.sft.adam_beta1: input should be a finite number, got nan",
    ),
    "Adam beta above one": (
        _set("train.sft.adam_beta2", 2.0),
        "train.sft.adam_beta2: Invalid beta parameter at index 1: 2.0, got 2.0",
    ),
    "negative warmup steps": (
        _set("train.sft.warmup_steps", -5),
        "train.sft.warmup_steps: warmup_steps must be of type int and must be 0 or a positive integer, got -5",
    ),
    "a passed-through key of the wrong type": (
        _set("train.dpo.max_grad_norm", "big"),
        "train.dpo.max_grad_norm: expected float, got 'big'",
    ),
    "negative seed": (_set("train.common.seed", -1), "train.common.seed: input should be greater than or equal to 0"),
    "seed past numpy's range": (_set("metrics.seed", 2**32), "metrics.seed: input should be less than or equal to"),
    "negative split seed": (
        _set("prepare.split_seed", -3),
        "prepare.split_seed: input should be greater than or equal",
    ),
    "negative top_k": (_set("generation.top_k", -5), "generation.top_k: input should be greater than or equal to -1"),
    "zero top_k": (_set("generation.top_k", 0), "generation.top_k: 0 is not a top_k"),
    "top_p above one": (_set("generation.top_p", 1.5), "generation.top_p: input should be less than or equal to 1"),
    "negative temperature": (_set("generation.temperature", -0.1), "generation.temperature: "),
    "path in a model name": (
        _set("models", ["../../../tmp/evil", "base"]),
        "models.0: model name '../../../tmp/evil' must match ^[A-Za-z0-9_.-]+$",
    ),
    "a model name too long for a file name": (
        _set("models", ["base", "m" * 240]),
        "models.1: model name 'mmmmmmmmmmmmmmmmmmmm'... has 240 characters, more than 100",
    ),
    "shell in a model name": (_set("probing.reference_model", "sft;touch x"), "probing.reference_model: model name"),
    "dots as a model name": (_set("train.relearn.starts", [".."]), "train.relearn.starts.0: model name '..'"),
    "space in a grpo version": (
        _set("train.grpo.versions", {"v 1": {}}),
        "train.grpo.versions.v 1.[key]: model name 'v 1' must match",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_malformed_params_fail_with_one_line_naming_the_key(tmp_path, case):
    mutate, expected = BAD_CASES[case]
    params = _write_params(tmp_path, mutate)
    with pytest.raises(ConfigError) as info:
        validate(resolve_raw(params))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(expected) or expected in message, message


def _slices(node, path: str):
    """(key path, slice) of every LibrarySlice under `node`."""
    from pydantic import BaseModel

    from sycorec.config import LibrarySlice

    if isinstance(node, LibrarySlice):
        yield path, node
    children = dict(node) if isinstance(node, BaseModel) else node if isinstance(node, dict) else {}
    for key, child in children.items():
        yield from _slices(child, f"{path}.{key}".lstrip("."))


def test_trainer_slices_use_the_field_names_of_their_trl_and_peft_configs():
    import dataclasses
    import importlib

    cfg = load_config(ROOT / "params.yaml")
    found = dict(_slices(cfg, ""))
    assert {"lora", "train.common", "train.sft", "train.rm", "train.grpo", "train.grpo.versions.v1"} <= set(found)
    assert {f"train.{method}" for method in ("dpo", "simpo", "ipo", "kto", "orpo")} <= set(found)  # the method table
    for path, part in found.items():
        module, name = part.config_class_of(part.model_dump()).split(":")
        fields = {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name))}
        assert set(part.library_kwargs()) <= fields, path  # every key it passes is a field of the class
        assert not part.OWN & fields, path  # and the package's own keys never shadow one


def test_any_field_of_the_trl_config_may_be_set_and_passes_through(tmp_path):
    params = _write_params(tmp_path, _set("train.dpo.label_smoothing", 0.1))
    dpo = validate(resolve_raw(params)).train.dpo
    assert dpo.library_kwargs()["label_smoothing"] == 0.1 and "eval_every_steps" not in dpo.library_kwargs()


def test_loading_the_params_imports_no_training_library():
    """Checking against the TRL classes imports TRL (seconds): only a key the schema does not declare needs it."""
    code = (
        "import sys; from sycorec.config import load_config; load_config('params.yaml', 'tiny'); "
        "sys.exit(' '.join(sorted({'torch', 'transformers', 'trl', 'peft'} & set(sys.modules))) or None)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def test_unknown_profile_names_the_available_ones(tmp_path):
    params = _write_params(tmp_path, lambda raw: None)
    with pytest.raises(ConfigError, match=r"unknown profile 'huge' \(available: tiny\)"):
        load_config(params, "huge")


def test_invalid_yaml_is_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve_raw(tmp_path / "params.yaml")


def test_model_names_of_the_study_pass_the_pattern():
    cfg = load_config(ROOT / "params.yaml")
    probed = [m for run in cfg.probing.runs.values() for m in run.models]
    names = [*cfg.models, *cfg.probing.runs, *probed, *cfg.train.relearn.starts, *cfg.train.grpo.versions]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", n) for n in names)


@pytest.mark.parametrize("where", ["params.yaml", "profiles/tiny.yaml"])
def test_duplicate_yaml_key_is_refused_with_its_line(tmp_path, where):
    _write_params(tmp_path, lambda raw: None)
    path = tmp_path / where
    lines = path.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("generation:"))
    lines.insert(at + 1, "  backend: hf")  # a second generation.backend (PyYAML would let the last one win)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as info:
        resolve_raw(tmp_path / "params.yaml", "tiny")
    where_, line, what = str(info.value).rsplit(":", 2)
    assert where_ == str(path) and what == " duplicate key 'backend'"
    assert lines[int(line) - 1].strip().startswith("backend:")


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sycorec", *args], capture_output=True, text=True, cwd=tmp_path)


def _one_line_exit_2(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr, proc.stderr


def test_params_not_utf8_or_a_directory_is_one_line(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes("seed: 42  # réglé\n".encode("latin-1"))
    _one_line_exit_2(_cli(tmp_path, "--params", "latin1.yaml", "config", "check"), "latin1.yaml: not UTF-8 text")
    (tmp_path / "params.yaml").mkdir()
    _one_line_exit_2(_cli(tmp_path, "config", "check"), "params.yaml: cannot read (Is a directory)")


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [(_set("train.dpo.beta", "high"), "train.dpo.beta: expected float, got 'high'"), (None, "unknown profile")],
)
def test_cli_exits_non_zero_with_one_line(tmp_path, mutate, needle):
    params = _write_params(tmp_path, mutate or (lambda raw: None))
    args = ["--params", str(params), "config", "check"] + ([] if mutate else ["--profile", "huge"])
    proc = subprocess.run([sys.executable, "-m", "sycorec", *args], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr


def test_config_show_prints_the_resolved_tiny_config():
    proc = subprocess.run(
        [sys.executable, "-m", "sycorec", "config", "show", "--profile", "tiny"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    shown = yaml.safe_load(proc.stdout)
    assert shown["profile"] == "tiny" and shown["judge"]["backend"] == "rule"
    assert validate(shown) == load_config(ROOT / "params.yaml", "tiny")


@pytest.mark.slow  # reads every library's version and the hardware
def test_env_prints_the_provenance_block():
    proc = subprocess.run([sys.executable, "-m", "sycorec", "env"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    block = yaml.safe_load(proc.stdout)
    assert {"git", "lock_sha256", "versions", "hardware", "image_digest"} <= set(block)
    locked = {
        line.split("==")[0]: line.split("==")[1].split()[0] for line in LOCK.read_text().splitlines() if "==" in line
    }
    assert block["versions"]["trl"] == locked["trl"] and block["versions"]["torch"].startswith(locked["torch"])
    assert set(block["git"]) == {"sha", "dirty"}


def test_params_comments_cite_readme_sections_that_exist() -> None:
    headings = {
        line.lstrip("#").strip() for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("#")
    }
    for path in (ROOT / "params.yaml", *sorted((ROOT / "profiles").glob("*.yaml"))):
        cited = re.findall(r'README "([^"]+)"', path.read_text())
        assert set(cited) <= headings, (path.name, set(cited) - headings)
    assert re.findall(r'README "([^"]+)"', (ROOT / "params.yaml").read_text()) == ["Stages in short"]
