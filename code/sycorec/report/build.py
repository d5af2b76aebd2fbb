"""`report build`: tables, figures, errata, provenance manifest, timings and the results page, from whatever inputs
exist."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from sycorec.clikit import TIMINGS_DIR
from sycorec.config import Config
from sycorec.io import write_json, write_text_atomic
from sycorec.report.errata import build_errata, load_errata
from sycorec.report.figures import draw_figures
from sycorec.report.manifest import build_manifest, collect_timings
from sycorec.report.page import beyond_figure, beyond_models, beyond_table, write_index
from sycorec.report.results import load_results
from sycorec.report.tables import build_tables, load_spec, write_tables


@dataclass
class BuildSummary:
    tables: int = 0
    files: list[Path] = field(default_factory=list)
    missing: dict[str, list[str]] = field(default_factory=dict)
    skipped_figures: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"wrote {self.tables} tables and {len(self.files)} files"]
        if self.missing:
            n = sum(len(v) for v in self.missing.values())
            out.append(f"n/a cells: {n} missing inputs in {len(self.missing)} tables (see results/tables/missing.json)")
            for name, paths in self.missing.items():
                out.append(f"  {name}: {', '.join(paths[:3])}{' …' if len(paths) > 3 else ''}")
        if self.skipped_figures:
            out.append(f"figures skipped for lack of input: {', '.join(self.skipped_figures)}")
        return out


def build_report(cfg: Config, root: Path = Path(".")) -> BuildSummary:
    spec = load_spec()
    results = load_results(cfg, join=spec.get("join"), root=root)
    out = root / cfg.paths.results
    tables_dir = out / "tables"
    summary = BuildSummary()
    tables = build_tables(spec, results)
    errata = build_errata(load_errata(), results)
    for table in tqdm(tables, desc="tables", unit="table"):
        summary.files += write_tables([table], tables_dir)
        if table.missing:
            summary.missing[table.name] = table.missing
    for suffix, text in ((".md", errata.markdown()), (".csv", errata.csv())):
        path = tables_dir / f"errata{suffix}"
        write_text_atomic(path, text)
        summary.files.append(path)
    if errata.missing:
        summary.missing["errata"] = errata.missing
    summary.tables = len(tables) + 1
    write_json(tables_dir / "missing.json", summary.missing)
    figures_dir = out / "figures" / "report"
    figures, summary.skipped_figures = draw_figures(spec, results, figures_dir, cfg.report.figure_dpi)
    summary.files += figures
    beyond = None
    labels = spec.get("model_labels", {})
    if extras := beyond_models(tables, cfg.models, results):
        reference = cfg.probing.reference_model
        runs = {name: run.models for name, run in cfg.probing.runs.items()}
        probed = (cfg.probing.beyond.run, list(cfg.probing.beyond.models))
        beyond = beyond_table(extras, reference, runs, probed, results, labels)
        summary.files += write_tables([beyond], tables_dir)
        summary.files += beyond_figure(extras, reference, results, labels, figures_dir, cfg.report.figure_dpi)
        summary.tables += 1
    timings = collect_timings(root / TIMINGS_DIR)
    write_json(out / "timings.json", timings)
    relative = [p.relative_to(root) for p in summary.files]
    write_json(out / "manifest.json", build_manifest(cfg, root, relative))
    # after the manifest, which the page shows (so the page's own hash is not in it)
    summary.files.append(write_index(cfg, root, spec, tables, errata, beyond, results))
    return summary
