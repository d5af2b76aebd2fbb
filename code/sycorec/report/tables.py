"""Tables of posts 1-4, laid out by tables.yaml and filled from the loaded results.

A table spec names its rows and columns; each is a mapping of a `label` plus variables. A cell is the key path
`cell` (row, then column, then table level) formatted with the merged variables, or a static `text`. A missing input
gives the cell "n/a" and is recorded, never raised.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sycorec.config import read_mapping
from sycorec.errors import ConfigError
from sycorec.io import write_text_atomic
from sycorec.report.results import Results

TABLES_FILE = Path(__file__).with_name("tables.yaml")
NA = "n/a"
SEEDS_NOTE = (
    "value [95% bootstrap CI of this run] seeds min–max over the runs of the committed seed sweep "
    "(`sycorec demo --seeds`, README)"
)
CSV_FIELDS = ["table", "row", "column", "value", "ci_lower", "ci_upper", "display", "path"]


def load_spec(path: Path = TABLES_FILE) -> dict[str, Any]:
    return read_mapping(path, "tables")


# tables.yaml's number formats as Python format specs; fN is N decimals
FORMAT_SPECS = {"pct": ".0%", "int": ".0f", "sci": ".0e", "p": ".3f"}


def fmt_number(value: float, fmt: str) -> str:
    if fmt in FORMAT_SPECS:
        return format(value, FORMAT_SPECS[fmt])
    if fmt.startswith("f") and fmt[1:].isdigit():
        return format(value, f".{fmt[1:]}f")
    raise ConfigError(f"unknown number format {fmt!r} in tables.yaml")


def fmt_ci(value: float, ci: tuple[float, float] | None, fmt: str) -> str:
    """`0.312 [0.29, 0.33]`: the CI two decimals narrower than the value (one for percents)."""
    text = fmt_number(value, fmt)
    if ci is None:
        return text
    if fmt == "pct":
        return f"{text} [{ci[0] * 100:.0f}, {ci[1] * 100:.0f}]"
    digits = max(int(fmt[1:]) - 1, 1) if fmt.startswith("f") and fmt[1:].isdigit() else 2
    return f"{text} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


@dataclass
class Cell:
    display: str
    value: float | None = None
    ci: tuple[float, float] | None = None
    path: str | None = None


@dataclass
class Table:
    post: str
    id: str
    title: str
    source: str
    row_header: str
    columns: list[str]
    rows: list[tuple[str, list[Cell]]]
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.post}/{self.id}"

    def markdown(self) -> str:
        lines = [f"### {self.title}", ""]
        if self.source:
            lines += [f"Published source: {self.source}", ""]
        header = [self.row_header, *self.columns]
        lines.append("| " + " | ".join(_md(h) for h in header) + " |")
        lines.append("|" + "---|" * len(header))
        for label, cells in self.rows:
            lines.append("| " + " | ".join(_md(x) for x in [label, *(c.display for c in cells)]) + " |")
        if self.missing:
            lines += ["", f"n/a = input missing: {', '.join(self.missing)}"]
        for note in self.notes:
            lines += ["", note]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for label, cells in self.rows:
            for column, cell in zip(self.columns, cells, strict=True):
                writer.writerow(
                    {
                        "table": self.name,
                        "row": label,
                        "column": column,
                        "value": "" if cell.value is None else repr(round(cell.value, 6)),
                        "ci_lower": "" if cell.ci is None else repr(round(cell.ci[0], 6)),
                        "ci_upper": "" if cell.ci is None else repr(round(cell.ci[1], 6)),
                        "display": cell.display,
                        "path": cell.path or "",
                    }
                )
        return buf.getvalue()


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _fill(template: str, variables: Mapping[str, Any]) -> str:
    try:
        return template.format(**variables)
    except KeyError as exc:
        raise ConfigError(f"tables.yaml: template {template!r} uses {exc} which no row/column defines") from None


def _rows(spec: Mapping[str, Any], results: Results) -> list[dict[str, Any]]:
    """Explicit rows, or one row per element of a list in the results (e.g. the steps of a curve)."""
    rows = spec["rows"]
    if isinstance(rows, list):
        return rows
    values = results.get(rows["from"])
    if not isinstance(values, list) or not values:
        values = rows.get("fallback", [])
    label = rows.get("label", "{" + rows["var"] + "}")
    return [{rows["var"]: v, "label": _fill(label, {rows["var"]: v})} for v in values]


def build_cell(results: Results, row: Mapping, column: Mapping, spec: Mapping, missing: list[str]) -> Cell:
    variables = {**spec.get("vars", {}), **column, **row}
    text = row.get("text", column.get("text"))
    if text is not None:
        return Cell(_fill(text, variables))
    template = row.get("cell", column.get("cell", spec.get("cell")))
    if template is None:
        raise ConfigError(f"tables.yaml: table {spec['id']!r} has a cell with neither `cell` nor `text`")
    path = _fill(template, variables)
    fmt = row.get("fmt", column.get("fmt", spec.get("fmt", "f3")))
    if fmt == "str":
        raw = results.get(path)
        if raw is None:
            missing.append(path)
        return Cell(NA if raw is None else str(raw), path=path)
    value = results.number(path)
    if value is None:
        missing.append(path)
        return Cell(NA, path=path)
    ci = results.ci(path) if spec.get("ci", True) else None
    display = fmt_ci(value, ci, fmt)
    seeds = results.seed_range(path)
    if seeds is not None:
        display += f" seeds {fmt_number(seeds[0], fmt)}–{fmt_number(seeds[1], fmt)}"
    p_template = row.get("p", column.get("p"))
    if p_template:
        p_path = _fill(p_template, variables)
        p = results.number(p_path)
        if p is None:
            missing.append(p_path)
        display += f" (p={fmt_number(p, 'p') if p is not None else NA})"
    return Cell(display, value, ci, path)


def build_grid(post: str, spec: Mapping[str, Any], results: Results) -> Table:
    missing: list[str] = []
    columns = spec["columns"]
    rows = [
        (_fill(str(row["label"]), row), [build_cell(results, row, column, spec, missing) for column in columns])
        for row in _rows(spec, results)
    ]
    notes = []
    if any(" seeds " in cell.display for _, cells in rows for cell in cells):
        notes.append(SEEDS_NOTE)
    if results.get("params.profile") != "full" and spec.get("tiny_note"):
        notes.append(spec["tiny_note"])
    return Table(
        post,
        spec["id"],
        spec["title"],
        spec.get("source", ""),
        spec.get("row_header", ""),
        [c["label"] for c in columns],
        rows,
        sorted(set(missing)),
        notes,
    )


def pick_example(results: Results, spec: Mapping[str, Any]) -> dict | None:
    """The study's own example item where its question is present; else the `rank`-th item (by id) where every
    `incorrect` model is incorrect and every `correct` model correct, so the tiny world gets a comparable example;
    failing that, the rule relaxed to the `correct` models only, then to any item (the title says which)."""
    models = spec["models"]
    verdicts = {m: results.verdicts(m) for m in models}
    if not all(verdicts.values()):
        return None
    common = sorted(set.intersection(*(set(v) for v in verdicts.values())))
    first = verdicts[models[0]]
    candidates = [
        i for i in common if first[i].get("dataset") == spec["dataset"] and first[i].get("template") == spec["template"]
    ]
    needle = spec.get("question_contains", "").lower()
    for item in candidates:
        if needle and needle in str(first[item].get("question", "")).lower():
            return {"item_id": item, "rule": "published question"}
    rule = spec["fallback"]

    def all_are(models: list[str], verdict: str, item: str) -> bool:
        return all(verdicts[m][item].get("verdict") == verdict for m in models)

    correct, incorrect, rank = rule.get("correct", []), rule.get("incorrect", []), rule.get("rank", 0)
    relaxed = [i for i in candidates if all_are(correct, "correct", i)]
    strict = [i for i in relaxed if all_are(incorrect, "incorrect", i)]
    for name, pool in (
        ("fallback rule", strict),
        ("relaxed rule: only the `correct` models checked", relaxed),
        ("any item: none fits the rule", candidates),
    ):
        if pool:
            return {"item_id": pool[min(rank, len(pool) - 1)], "rule": name}
    return None


def build_examples(post: str, spec: Mapping[str, Any], results: Results) -> Table:
    columns = ["Verdict", "Response"]
    limit = spec.get("max_chars", 400)
    picked = pick_example(results, spec)
    if picked is None:
        rows = [(m, [Cell(NA), Cell(NA)]) for m in spec["models"]]
        return Table(post, spec["id"], spec["title"], spec.get("source", ""), "Model", columns, rows, ["verdicts"])
    item = picked["item_id"]
    question = results.verdicts(spec["models"][0])[item].get("question", "")
    rows = []
    for model in spec["models"]:
        row = results.verdicts(model)[item]
        response = " ".join(str(row.get("response", "")).split())
        response = response if len(response) <= limit else response[: limit - 1] + "…"
        rows.append((model, [Cell(str(row.get("verdict", NA))), Cell(response)]))
    title = f"{spec['title']}: {question} (item {item}, {picked['rule']})"
    return Table(post, spec["id"], title, spec.get("source", ""), "Model", columns, rows)


BUILDERS = {"grid": build_grid, "examples": build_examples}


def build_tables(spec: Mapping[str, Any], results: Results) -> list[Table]:
    tables = []
    for post, specs in spec["tables"].items():
        for table_spec in specs:
            kind = table_spec.get("kind", "grid")
            if kind not in BUILDERS:
                raise ConfigError(f"tables.yaml: table {table_spec.get('id')!r} has unknown kind {kind!r}")
            tables.append(BUILDERS[kind](post, table_spec, results))
    return tables


def write_tables(tables: list[Table], out_dir: Path) -> list[Path]:
    written = []
    for table in tables:
        for suffix, text in ((".md", table.markdown()), (".csv", table.csv())):
            path = out_dir / table.post / f"{table.id}{suffix}"
            write_text_atomic(path, text)
            written.append(path)
    return written
