"""The build report: row and caption counts, translation statistics and every skipped or repaired item."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..safe_io import atomic_write_text

# What happened to a reported item.
SKIPPED = "skipped"  # the item (an image row, a caption, a file) is not in the dataset
REPAIRED = "repaired"  # the item was fixed and kept (e.g. an image found under another extension)
INCOMPLETE = "incomplete"  # the row is kept but lacks something (a label, a caption in one language)
ACTIONS = (SKIPPED, REPAIRED, INCOMPLETE)


@dataclass
class ReportEntry:
    """One problem found while building: ``item`` names the file/row, ``reason`` says what was wrong."""

    item: str
    reason: str
    action: str = SKIPPED
    split: str | None = None

    def __str__(self) -> str:
        where = f" [{self.split}]" if self.split else ""
        return f"{self.action}: {self.item}{where}: {self.reason}"


@dataclass
class BuildReport:
    """Everything a user needs to trust a build: what went in, what came out, and what was left out and why."""

    source: str
    layout: str
    languages: list[str] = field(default_factory=list)
    entries: list[ReportEntry] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    captions: dict[str, dict[str, int]] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    # ImageFolder sets: the name of every class in every language, as put in the captions (read back by evaluation).
    class_names: dict[str, dict[str, str]] = field(default_factory=dict)
    translation: dict[str, dict[str, int]] = field(default_factory=dict)
    distinct_english_texts: int = 0
    translation_model: str | None = None
    translations_cache: str | None = None
    peak_rss_mb: float | None = None
    elapsed_s: float | None = None

    def add(self, item: str, reason: str, action: str = SKIPPED, split: str | None = None) -> None:
        if action not in ACTIONS:
            raise ValueError(f"unknown report action {action!r}; expected one of {ACTIONS}")
        self.entries.append(ReportEntry(item=str(item), reason=reason, action=action, split=split))

    @property
    def ok(self) -> bool:
        """True when nothing was skipped, repaired or left incomplete."""
        return not self.entries

    def count(self, action: str) -> int:
        return sum(entry.action == action for entry in self.entries)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["summary"] = {action: self.count(action) for action in ACTIONS}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuildReport:
        data = dict(data)
        data.pop("summary", None)
        entries = [ReportEntry(**entry) for entry in data.pop("entries", [])]
        return cls(entries=entries, **data)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the report as JSON (atomically: a crash never leaves half a report)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BuildReport:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def summary(self, max_entries: int = 20) -> str:
        """A human-readable summary: counts per split and language, then the reported items."""
        lines = [f"Build report for {self.source!r} ({self.layout} layout)"]
        if self.rows:
            langs = self.languages or sorted({lang for counts in self.captions.values() for lang in counts})
            header = f"  {'split':<12}{'rows':>7}" + "".join(f"{lang:>7}" for lang in langs)
            lines += ["  captions per split and language:", header]
            for split, n_rows in self.rows.items():
                per_lang = self.captions.get(split, {})
                lines.append(
                    f"  {split:<12}{n_rows:>7}" + "".join(f"{per_lang.get(lang, 0):>7}" for lang in langs)
                )
        if self.translation:
            lines.append("  translations (cached / translated / failed):")
            for lang, stats in self.translation.items():
                lines.append(
                    f"    {lang}: {stats.get('cached', 0)} / {stats.get('translated', 0)} / {stats.get('failed', 0)}"
                )
        if self.peak_rss_mb is not None:
            lines.append(f"  peak memory (RSS): {self.peak_rss_mb:.0f} MB")
        counts = ", ".join(f"{self.count(action)} {action}" for action in ACTIONS)
        lines.append(f"  reported items: {counts}")
        for entry in self.entries[:max_entries]:
            lines.append(f"    - {entry}")
        if len(self.entries) > max_entries:
            lines.append(f"    ... and {len(self.entries) - max_entries} more (see the JSON report)")
        return "\n".join(lines)
