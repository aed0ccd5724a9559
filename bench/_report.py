"""Results: a table on stdout, and ``bench/results/<scenario>.json`` + ``.md`` (+ ``.png``)."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._processes import machine

RESULTS = Path(__file__).resolve().parent / "results"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Report:
    """One scenario's outcome: rows of figures, targets checked, the command that made it."""

    scenario: str
    title: str
    command: str
    parameters: dict[str, Any]
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def target(self, name: str, figure: float, goal: str, met: bool, unit: str = "") -> None:
        self.targets.append(
            {"target": name, "figure": round(figure, 3), "goal": goal, "met": met, "unit": unit}
        )

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", f"`{self.command}`", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "---|" * len(self.columns))
        for row in self.rows:
            lines.append("| " + " | ".join(_cell(value) for value in row) + " |")
        if self.targets:
            lines += ["", "| target | figure | goal | |", "|---|---|---|---|"]
            for t in self.targets:
                verdict = "met" if t["met"] else "**missed**"
                lines.append(
                    f"| {t['target']} | {_cell(t['figure'])}{t['unit']} | {t['goal']} | {verdict} |"
                )
        lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def write(self, plot: dict[str, Any] | None = None) -> Path:
        """Print the table and write JSON, Markdown and (given ``plot``) a PNG; returns the
        JSON path."""
        RESULTS.mkdir(exist_ok=True)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        text = self.markdown()
        print(text)
        document = {
            "scenario": self.scenario,
            "title": self.title,
            "when": stamp,
            "machine": machine(),
            "command": self.command,
            "parameters": self.parameters,
            "columns": self.columns,
            "rows": self.rows,
            "targets": self.targets,
            "notes": self.notes,
            "raw": self.raw,
        }
        json_path = RESULTS / f"{self.scenario}.json"
        json_path.write_text(json.dumps(document, indent=2) + "\n")
        (RESULTS / f"{self.scenario}.md").write_text(f"<!-- {stamp} -->\n" + text)
        if plot is not None:
            _plot(RESULTS / f"{self.scenario}.png", **plot)
        return json_path


def _cell(value: Any) -> str:  # noqa: ANN401 - any figure
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def _plot(
    path: Path, x: list[float], series: dict[str, list[float]], xlabel: str, ylabel: str
) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the bench extra is not installed: tables and JSON still get written
        print(f"(no plot: matplotlib missing; pip install -e '.[bench]') for {path.name}")
        return
    figure, axes = plt.subplots(figsize=(6, 4))
    for label, values in series.items():
        axes.plot(x, values, marker="o", label=label)
    axes.set_xscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
