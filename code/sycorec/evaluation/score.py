"""The `score` stage: one model's judgments → per-sample verdicts, headline metrics with CIs, detailed metrics."""

from __future__ import annotations

from sycorec.config import Config
from sycorec.errors import MissingInputError
from sycorec.evaluation.items import is_mc, load_manifest, unanswerable
from sycorec.evaluation.judge import verdict_fields
from sycorec.evaluation.metrics import detail, headline
from sycorec.evaluation.store import recover_rows
from sycorec.facts import eval_datasets, headline_keys, metric_versions
from sycorec.io import iter_jsonl, write_json, write_jsonl
from sycorec.paths import detail_path, generations_path, judgments_path, metrics_path, verdicts_path


def _question(base: dict) -> str:
    return str(base.get("question") or base.get("text") or "")


def verdict_rows(cfg: Config, model: str) -> tuple[list[dict], dict[str, list[dict]]]:
    """Judgments joined with their items and replies; also each two-pass dataset's pass-1 rows (for pass-1
    accuracy)."""
    rows: list[dict] = []
    pass1: dict[str, list[dict]] = {}
    for dataset, spec in eval_datasets(cfg).items():
        path = judgments_path(cfg, model, dataset)
        if not path.is_file():
            raise MissingInputError(f"{path}: no judgments (run `sycorec judge` first)")
        items = {i["item_id"]: i for i in load_manifest(cfg, dataset)}
        gens = {f"{r['item_id']}:{r['pass']}": r for r in recover_rows(generations_path(cfg, model, dataset))}
        two_pass = spec.mode == "two_pass"
        if two_pass:
            pass1[dataset] = [g for k, g in gens.items() if k.endswith(":1") and g["item_id"] in items]
        fields = ["reasoning", *verdict_fields(spec.judge.verdict)]
        for j in iter_jsonl(path):
            iid = j["item_id"]
            row = {
                "item_id": iid,
                "dataset": dataset,
                "template": j["template"],
                "sub_dataset": j["sub_dataset"],
                "seen": j["seen"],
                "question": _question(items[iid]["base"]),
                "response": gens[f"{iid}:2" if two_pass else f"{iid}:1"]["response"],
                "parse_ok": j["parse_ok"],
                **{f: j[f] for f in fields},
            }
            if two_pass:
                first = gens[f"{iid}:1"]
                row.update(
                    pass1_response=first["response"],
                    challenge=gens[f"{iid}:2"]["challenge"],
                    format="mc" if is_mc(items[iid]) else "free_form",
                )
            rows.append(row)
    return rows, pass1


POLICIES = ("study_default", "exclude")


def score_model(cfg: Config, model: str) -> dict:
    rows, pass1 = verdict_rows(cfg, model)
    policy = cfg.judge.parse_failure_policy
    metrics = headline(rows, cfg.metrics, policy)
    datasets = eval_datasets(cfg)
    out = detail(rows, pass1, policy, datasets)
    # the headline under each parse-failure policy, so a reader sees what the study's silent defaults moved
    out["by_policy"] = {
        p: {
            k: v
            for k, v in (metrics if p == policy else headline(rows, cfg.metrics, p)).items()
            if k not in ("ci", "n")
        }
        for p in POLICIES
    }
    letters = cfg.generation.mc_letters
    for name in (name for name, spec in datasets.items() if spec.mode == "two_pass"):
        out[name]["mc_letters"] = letters
        # rows whose correct option the pass-1 choice never offers: never correct, never challenged
        out[name]["unanswerable"] = unanswerable(load_manifest(cfg, name), letters)
    # which definitions made these numbers, so a file written under an older definition is told apart
    metrics["metric_versions"] = out["metric_versions"] = metric_versions(headline_keys())
    write_jsonl(verdicts_path(cfg, model), rows)
    write_json(detail_path(cfg, model), out)
    write_json(metrics_path(cfg, model), metrics)
    return metrics
