"""The committed seed-sweep record of the tiny organism (report.seed_sweep; made by `sycorec demo --seeds N`): per CPU
kernel path, one run per seed (model -> reading -> value); each reading's spread, how often each direction holds, and
the margin the e2e test asserts where a direction is robust."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sycorec.facts import higher_is_better

STUDY_METHODS = ("dpo", "ipo", "simpo")
EXTRA_METHODS = ("kto", "orpo")  # the method table's rows beyond the study: swept where a record has them
RECOVERY = (*STUDY_METHODS, *EXTRA_METHODS)
MODELS = ("base", "sft", *RECOVERY)
# reading -> what it is; flip_rate_free_form leaves out multiple-choice rows, which the tiny model answers at chance
READINGS = {
    "answer_sycophancy_rate": "answer sycophancy",
    "flip_rate": "flip rate (all rows)",
    "flip_rate_free_form": "flip rate (free-form rows)",
    "proxy_gap": "proxy gap",
    "plain_accuracy": "plain accuracy",
    "feedback_sycophancy": "feedback sycophancy",
    "probe_peak_auroc": "probe peak AUROC",
}
# reading -> the registered headline metric whose direction it has (flip_rate on free-form rows; the proxy's answer gap)
DIRECTED = {
    "answer_sycophancy_rate": "answer_sycophancy_rate",
    "flip_rate": "flip_rate",
    "flip_rate_free_form": "flip_rate",
    "proxy_gap": "answer_sycophancy_gap",
}
CONTROL = "control"  # the random-label probe control, read as a model of its own
FAILED = "failed"  # a run whose pipeline stopped (e.g. the tiny base below its accuracy gate) records why
# A direction is asserted when, on every kernel path, it fails in at most max(1, 20%) of the seeds (4 of 5, 2 of 3)...
MISS_SHARE = 0.2
# ...and its margin, the lower of mean − Z × SD and the smallest change over all runs, is positive.
Z = 2.0


@dataclass(frozen=True)
class Direction:
    reading: str
    high: str
    low: str

    @property
    def name(self) -> str:
        return f"{self.reading}: {self.high} > {self.low}"

    def delta(self, run: Mapping[str, Mapping[str, float | None]]) -> float | None:
        high, low = run.get(self.high, {}).get(self.reading), run.get(self.low, {}).get(self.reading)
        return None if high is None or low is None else high - low


def worse(reading: str, model: str, than: str) -> Direction:
    """`model` is worse than `than` on `reading`: higher or lower as the metric registry says."""
    return Direction(reading, than, model) if higher_is_better(DIRECTED[reading]) else Direction(reading, model, than)


DIRECTIONS = tuple(
    [worse(r, "sft", "base") for r in DIRECTED]
    + [worse(r, "sft", m) for r in DIRECTED for m in RECOVERY]
    + [Direction("probe_peak_auroc", "sft", CONTROL)]
)


# --------------------------------------------------------------------------- summaries


def _stats(values: Sequence[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def all_runs(record: Mapping[str, Any]) -> list[dict]:
    """Every run that finished (a run whose pipeline failed holds only `failed`)."""
    return [run for path in record["paths"].values() for run in path["runs"].values() if FAILED not in run]


def failures(record: Mapping[str, Any]) -> list[str]:
    return [
        f"{path} seed {seed}: {run[FAILED]}"
        for path, v in record["paths"].items()
        for seed, run in v["runs"].items()
        if FAILED in run
    ]


def direction_summary(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per direction: how often it holds on each kernel path, the spread of the change, whether the e2e asserts it."""
    out = []
    paths = list(record["paths"])
    for direction in DIRECTIONS:
        per_path = {}
        for path in paths:
            # a failed run counts as a miss; a run without the reading (a method that path did not sweep) not at all
            runs = [r for r in record["paths"][path]["runs"].values() if FAILED in r or direction.delta(r) is not None]
            deltas = [d for run in runs if FAILED not in run and (d := direction.delta(run)) is not None]
            per_path[path] = {"holds": sum(d > 0 for d in deltas), "runs": len(runs)}
        deltas = [d for run in all_runs(record) if (d := direction.delta(run)) is not None]
        stats = _stats(deltas) if deltas else None
        margin = None
        if stats:
            # never above a recorded run's change: each run the record holds would pass the e2e test
            bound = min(stats["mean"] - Z * stats["sd"], stats["min"])
            margin = math.floor(bound * 100) / 100 if bound > 0 else None
        robust = bool(paths) and all(  # every path swept it
            c["runs"] and c["holds"] >= c["runs"] - max(1, math.floor(MISS_SHARE * c["runs"]))
            for c in per_path.values()
        )
        out.append(
            {
                "direction": direction.name,
                "per_path": per_path,
                "change": stats,
                "margin": margin,
                "asserted": robust and margin is not None,
            }
        )
    return out


def margins(record: Mapping[str, Any]) -> dict[str, float]:
    """direction name -> margin the e2e test asserts, for the robust directions only."""
    return {d["direction"]: d["margin"] for d in direction_summary(record) if d["asserted"]}


def reading_summary(record: Mapping[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    runs = all_runs(record)
    return {
        model: {
            key: _stats(values)
            for key in READINGS
            if (values := [v for run in runs if (v := run.get(model, {}).get(key)) is not None])
        }
        for model in (*MODELS, CONTROL)
    }


def markdown(record: Mapping[str, Any]) -> str:
    """README tables: readings across seeds and kernel paths, and the directions with their margins."""
    runs = sum(len(v["runs"]) for v in record["paths"].values())
    paths = ", ".join(f"{p} ({len(v['runs'])} seed{'s' * (len(v['runs']) != 1)})" for p, v in record["paths"].items())
    lines = [
        f"Seed sweep of the tiny organism: {runs} runs on kernel paths {paths}; mean ± SD [min, max] across the runs"
        " that finished.",
        "",
        "| model | " + " | ".join(READINGS.values()) + " |",
        "|---|" + "---|" * len(READINGS),
    ]
    summary = reading_summary(record)
    for model in (*MODELS, CONTROL):
        cells = []
        for key in READINGS:
            s = summary[model].get(key)
            cells.append("n/a" if s is None else f"{s['mean']:.3f} ± {s['sd']:.3f} [{s['min']:.2f}, {s['max']:.2f}]")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| direction | holds (per path) | change mean ± SD | e2e margin |",
        "|---|---|---|---|",
    ]
    for d in direction_summary(record):
        holds = ", ".join(f"{c['holds']}/{c['runs']}" if c["runs"] else "–" for c in d["per_path"].values())
        change = "n/a" if d["change"] is None else f"{d['change']['mean']:+.3f} ± {d['change']['sd']:.3f}"
        margin = f"> {d['margin']:.2f}" if d["asserted"] else "not asserted"
        lines.append(f"| {d['direction']} | {holds} | {change} | {margin} |")
    if failures(record):
        lines += ["", "Runs that did not finish (each counts as a miss for every direction):", ""]
        lines += [f"- {failure}" for failure in failures(record)]
    return "\n".join(lines) + "\n"
