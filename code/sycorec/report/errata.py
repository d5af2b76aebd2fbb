"""Errata view: each inconsistency between the posts (errata.yaml) next to this run's value of the quantity."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sycorec.config import read_mapping
from sycorec.report.results import Results
from sycorec.report.tables import NA, Cell, Table, fmt_number

ERRATA_FILE = Path(__file__).with_name("errata.yaml")
COLUMNS = ["What", "Version A (source)", "Version B (source)", "This run", "Note"]


def load_errata(path: Path = ERRATA_FILE) -> list[dict[str, Any]]:
    return read_mapping(path, "errata")["errata"]


def this_run(entry: Mapping[str, Any], results: Results) -> tuple[str, list[str]]:
    """`mean 0.679 / peak 0.784` from the entry's key paths; the paths that were missing."""
    parts, missing = [], []
    for item in entry.get("this_run", []):
        fmt = item.get("fmt", "f3")
        value = results.number(item["path"])
        if value is None:
            missing.append(item["path"])
        parts.append(f"{item['label']} {NA if value is None else fmt_number(value, fmt)}")
    return " / ".join(parts), missing


def build_errata(entries: list[Mapping[str, Any]], results: Results) -> Table:
    rows, missing = [], []
    for entry in entries:
        shown, absent = this_run(entry, results)
        missing += absent
        paths = ";".join(item["path"] for item in entry.get("this_run", []))
        rows.append(
            (
                str(entry["id"]),
                [
                    Cell(entry["what"]),
                    Cell(f"{entry['a']['value']} ({entry['a']['source']})"),
                    Cell(f"{entry['b']['value']} ({entry['b']['source']})"),
                    Cell(shown, path=paths),
                    Cell(entry.get("note", "")),
                ],
            )
        )
    title = (
        "Errata: the same quantity printed with different values across posts 1-4 (1-20) and the study's code "
        "defects kept as run (21-), beside one consistent run"
    )
    source = "published-tables inconsistencies 1-20; the study's code"
    return Table("", "errata", title, source, "id", COLUMNS, rows, sorted(set(missing)))
