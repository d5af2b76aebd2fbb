"""Shared plumbing for stage commands: the resolved config and stage timing."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from sycorec import provenance
from sycorec.config import Config, load_config
from sycorec.io import write_json

TIMINGS_DIR = Path("outputs/timings")
ENVIRONMENTS_DIR = Path("outputs/environments")  # per DVC stage: where it ran (collected into results/manifest.json)


def pass_config(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command the validated config of the root group's --params/--profile."""

    @click.pass_context
    @functools.wraps(func)
    def wrapper(ctx: click.Context, *args: Any, **kwargs: Any) -> Any:
        root = ctx.find_root()
        obj = root.obj or {}
        cfg = load_config(obj.get("params", "params.yaml"), obj.get("profile"))
        return ctx.invoke(func, cfg, *args, **kwargs)

    return wrapper


def record_timing(stage: str, seconds: float, directory: Path = TIMINGS_DIR) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{stage}.json").write_text(json.dumps({"stage": stage, "seconds": round(seconds, 3)}) + "\n")


def timed(stage: str | Callable[[dict[str, Any]], str | None]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Record a stage's wall time in outputs/timings/<stage>.json under its DVC stage name, so timings.json joins
    with `dvc dag` (collected by the demo and the report), and where it ran in outputs/environments/<stage>.json.

    `stage` is the name, a template of the command's options for a foreach stage (`"generate@{model}"`), or a
    function of them that returns None for an invocation that is no DVC stage, which records nothing.
    """
    name_of = stage if callable(stage) else stage.format_map

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            result = func(*args, **kwargs)
            name = name_of(kwargs)
            if name is not None:
                record_timing(name, time.perf_counter() - start)
                write_json(ENVIRONMENTS_DIR / f"{name}.json", {"stage": name, **provenance.stage_environment()})
            return result

        # outer decorators' functools.wraps copy it onto the click callback, where a test checks it against dvc.yaml
        wrapper.stage_name = name_of  # type: ignore[attr-defined]
        return wrapper

    return decorate


def stage(name: str | Callable[[dict[str, Any]], str | None]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A DVC stage's command: called with the validated config first, its wall time recorded under `name` (timed)."""
    return lambda func: pass_config(timed(name)(func))


__all__ = ["Config", "pass_config", "record_timing", "stage", "timed"]
