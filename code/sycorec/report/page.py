"""results/index.html: every table, figure, the published diff, the errata, the models beyond the study and the
provenance on one static page (no server, no network: inline CSS, figures by relative path to the PNGs beside it)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from sycorec.config import Config
from sycorec.facts import headline_keys
from sycorec.io import read_json, write_text_atomic
from sycorec.paths import beyond_run, probing_result_runs
from sycorec.probe.figures import STEMS as PROBE_STEMS
from sycorec.report.diff import POSTS, PostDiff, diff_post, load_published, published_path
from sycorec.report.figures import METRIC_LABELS, draw_figures
from sycorec.report.results import Results
from sycorec.report.tables import SEEDS_NOTE, Cell, Table, build_cell

TEMPLATE = "index.html.jinja"
BEYOND_ID = "beyond_study"
BEYOND_TITLE = "Beyond the study: headline rates (95% CI)"
# the bars of the beyond-the-study figure: the rates the posts' behaviour figures show
BEYOND_BARS = ["aggregate_sycophancy", "answer_sycophancy_rate", "flip_rate", "feedback_sycophancy"]


@dataclass
class Figure:
    title: str
    png: str
    pdf: str | None


def models_shown(tables: list[Table], models: list[str]) -> set[str]:
    """The models of `models` that some table cell reads (a key path segment names the model)."""
    segments = {s for t in tables for _, cells in t.rows for c in cells if c.path for s in c.path.split(".")}
    return {m for m in models if m in segments}


def beyond_models(tables: list[Table], models: list[str], results: Results) -> list[str]:
    """Models evaluated in this run (a metrics file) that no post's table shows, e.g. KTO and ORPO when added."""
    shown = models_shown([t for t in tables if t.post], models)
    return [m for m in models if m not in shown and results.get(f"metrics.{m}") is not None]


def _probe_rows(run: str, name: str, unprobed: set[str], reference: str, ref: str) -> list[dict[str, Any]]:
    """Own-model mean AUROC and the reference probe's transfer, read from probing results folder `run` (it may hold
    `{model}`); "—" where it has no such number: a model it does not probe, the reference's transfer to itself."""
    transfer = f"probing.{run}.transfer.{{model}}"
    return [
        {"label": f"Own-model mean AUROC ({name})", "cell": f"probing.{run}.per_model.{{model}}.mean_auroc",
         "none": unprobed},
        {"label": f"{ref}→X mean transfer ({name})", "cell": f"{transfer}.mean_auroc", "none": {*unprobed, reference}},
        {"label": f"{ref}→X peak transfer ({name})", "cell": f"{transfer}.peak_auroc", "none": {*unprobed, reference}},
    ]  # fmt: skip


def beyond_table(
    extras: list[str],
    reference: str,
    probing_runs: Mapping[str, list[str]],
    beyond: tuple[str, list[str]],
    results: Results,
    labels: Mapping[str, str],
) -> Table:
    """Headline metrics with CIs (and seed ranges) of the extra models beside the model they recover from, then the
    probes of every probing run that includes one of them, and of `beyond` (a study run, the models probed as it
    probes its own: probing.beyond): own-model mean AUROC and the reference's probe transfer."""
    models = [reference, *extras]
    columns = [{"label": labels.get(m, m), "model": m} for m in models]
    rows: list[dict[str, Any]] = [
        {
            "label": METRIC_LABELS.get(k, k.replace("_", " ").capitalize()),
            "cell": f"metrics.{{model}}.{k}",
            "fmt": "int" if k == "parse_failures" else "f3",
        }
        for k in headline_keys()
    ]
    ref = labels.get(reference, reference)
    for run, run_models in probing_runs.items():
        if any(m in run_models for m in extras):
            rows += _probe_rows(run, run, {m for m in models if m not in run_models}, reference, ref)
    source, probed = beyond
    if any(m in probed for m in extras):
        unprobed = {m for m in models if m not in probed}
        rows += _probe_rows(beyond_run(source, "{model}"), f"{source} prompts", unprobed, reference, ref)
    spec = {"id": BEYOND_ID, "title": ""}
    missing: list[str] = []
    grid = [
        (
            row["label"],
            [
                Cell("—") if column["model"] in row.get("none", ()) else build_cell(results, row, column, spec, missing)
                for column in columns
            ],
        )
        for row in rows
    ]
    title = f"Beyond the study: {', '.join(labels.get(m, m) for m in extras)} beside {ref}"
    notes = [SEEDS_NOTE] if any(" seeds " in c.display for _, cells in grid for c in cells) else []
    header = [c["label"] for c in columns]
    return Table("", BEYOND_ID, title, "", "Metric", header, grid, sorted(set(missing)), notes)


def beyond_figure(
    extras: list[str], reference: str, results: Results, labels: Mapping[str, str], out_dir: Path, dpi: int
) -> list[Path]:
    spec = {
        "id": BEYOND_ID,
        "kind": "behaviour_bars",
        "title": BEYOND_TITLE,
        "models": [reference, *extras],
        "metrics": BEYOND_BARS,
    }
    written, _ = draw_figures({"figures": [spec], "model_labels": labels}, results, out_dir, dpi)
    return written


def _figure(results_dir: Path, png: Path, title: str) -> Figure:
    pdf = png.with_suffix(".pdf")
    rel = png.relative_to(results_dir).as_posix()
    return Figure(title, rel, pdf.relative_to(results_dir).as_posix() if pdf.is_file() else None)


def report_figures(spec: Mapping[str, Any], results_dir: Path) -> dict[str, list[Figure]]:
    """The drawn figures of tables.yaml by post (an id's prefix names its post)."""
    by_post: dict[str, list[Figure]] = {}
    for fig in spec.get("figures", []):
        png = results_dir / "figures" / "report" / f"{fig['id']}.png"
        if png.is_file():
            by_post.setdefault(fig["id"].split("_")[0], []).append(_figure(results_dir, png, fig["title"]))
    return by_post


def probing_figures(runs: list[str], tables: list[Table], results_dir: Path) -> list[dict[str, Any]]:
    """Each probing run's figures, with the posts whose tables read that run."""
    out = []
    for run in runs:
        pngs = [results_dir / "figures" / "probing" / run / f"{stem}.png" for stem in PROBE_STEMS]
        posts = sorted(
            {
                t.post
                for t in tables
                if t.post and any(c.path and c.path.startswith(f"probing.{run}.") for _, cells in t.rows for c in cells)
            }
        )
        figures = [_figure(results_dir, p, p.stem.replace("_", " ")) for p in pngs if p.is_file()]
        out.append({"run": run, "posts": posts, "figures": figures})
    return out


def table_view(table: Table, results_dir: Path) -> dict[str, Any]:
    stem = Path("tables") / table.post / table.id
    return {
        "anchor": f"{table.post}-{table.id}" if table.post else f"{table.id}-table",
        "table": table,
        "rows": [(label, [c.display for c in cells]) for label, cells in table.rows],
        "links": [(s, f"{stem.as_posix()}.{s}") for s in ("md", "csv") if (results_dir / f"{stem}.{s}").is_file()],
    }


def diff_view(result: PostDiff) -> dict[str, Any]:
    def num(x: float | None, spec: str) -> str:
        return "" if x is None else format(x, spec)

    lines = [
        {
            "id": ln.id,
            "model": ln.model,
            "regenerated": num(ln.regenerated, ".4g"),
            "published": f"{ln.published:g}",
            "delta": num(ln.delta, ".3g"),
            "tolerance": ln.tolerance,
            "status": ln.status,
            "run": ln.run,
            "note": "; ".join(x for x in (f"errata {ln.errata}" if ln.errata else "", ln.note) if x),
        }
        for ln in result.lines
    ]
    return {
        "post": result.post,
        "summary": result.summary(),
        "failed": result.failed,
        "counts": sorted(result.counts.items()),
        "structure_problems": result.structure_problems,
        "lines": lines,
        "links": [(s, f"published_diff/{result.post}.{s}") for s in ("md", "json")],
    }


def write_page(path: Path, context: Mapping[str, Any]) -> Path:
    env = Environment(
        loader=FileSystemLoader(Path(__file__).parent),
        autoescape=select_autoescape(["html", "jinja"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    write_text_atomic(path, env.get_template(TEMPLATE).render(**context))
    return path


def manifest_view(manifest: Mapping[str, Any], timings: Mapping[str, Any]) -> dict[str, Any]:
    env = manifest.get("environment", {})
    return {
        "summary": [
            ("profile", manifest.get("profile")),
            ("params sha256", manifest.get("params_sha256")),
            ("git", json.dumps(env.get("git"))),
            ("lock sha256", env.get("lock_sha256")),
            ("image digest", env.get("image_digest")),
            ("hardware", json.dumps(env.get("hardware"))),
        ],
        "revisions": json.dumps(manifest.get("revisions"), indent=2),
        "versions": json.dumps(env.get("versions"), indent=2),
        "full": json.dumps(manifest, indent=2),
        "timings": sorted(timings.get("stages", {}).items()),
        "total_seconds": timings.get("total_seconds"),
    }


def write_index(
    cfg: Config,
    root: Path,
    spec: Mapping[str, Any],
    tables: list[Table],
    errata: Table,
    beyond: Table | None,
    results: Results,
) -> Path:
    """Render results/index.html from what `report build` wrote (tables, figures, manifest, timings) and the
    published diff of every post, computed here from the same tables so that the page never shows a stale diff."""
    out = root / cfg.paths.results
    published = load_published(published_path(root / cfg.report.published))
    diffs = [diff_post(p, published, results, spec, out / "tables", cfg.is_tiny) for p in POSTS]
    figures = report_figures(spec, out)
    posts = [
        {
            "name": post,
            "tables": [table_view(t, out) for t in tables if t.post == post],
            "figures": figures.get(post, []),
        }
        for post in spec["tables"]
    ]
    beyond_png = out / "figures" / "report" / f"{BEYOND_ID}.png"
    context = {
        "profile": cfg.profile,
        "posts": posts,
        "probing": probing_figures(probing_result_runs(cfg), tables, out),
        "diffs": [diff_view(d) for d in diffs],
        "errata": table_view(errata, out),
        "beyond": None if beyond is None else table_view(beyond, out),
        "beyond_figure": _figure(out, beyond_png, BEYOND_TITLE) if beyond and beyond_png.is_file() else None,
        "provenance": manifest_view(read_json(out / "manifest.json"), read_json(out / "timings.json")),
        "files": [f for f in ("manifest.json", "timings.json", "tables/missing.json") if (out / f).is_file()],
    }
    return write_page(out / "index.html", context)
