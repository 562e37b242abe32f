"""Output of ``lint_migrations``: text for people, JSON for scripts, SARIF for code-scanning UIs.

The three formats carry the same records, so a CI job can gate on one and a
reviewer read another without the two disagreeing. The JSON shape is a
documented contract (schema in docs/pages/linter.md, checked by the tests):
fields are only ever added, and ``version`` changes if one is removed.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from .findings import RULES

JSON_VERSION = 1


def seconds_text(seconds):
    """A lock time for people: two significant digits, no scientific notation."""
    if seconds < 0.01:
        return "under 0.01 s"
    if seconds < 100:
        return f"{float(f'{seconds:.2g}'):g} s"
    return f"{seconds:,.0f} s"


@dataclass
class Result:
    """One finding, placed: which migration, which operation, which table, whose code."""

    app: str
    migration: str
    file: "str | None"
    line: "int | None"
    operation_index: int
    finding: object
    third_party: bool = False
    package: "str | None" = None
    rows: "int | None" = None
    ignore: object = None

    @property
    def rule(self):
        return self.finding.code

    @property
    def severity(self):
        return self.finding.severity

    @property
    def expected_lock_seconds(self):
        """Rows / the rule's rows-per-second rate for locks that grow with the table; None when unknown or instant."""
        rate = RULES[self.rule].rows_per_second
        if self.rows is None or rate is None:
            return None
        return self.rows / rate

    @property
    def alternative(self):
        if not self.third_party:
            return self.finding.fix
        lock = self.expected_lock_seconds
        rate = RULES[self.rule].rows_per_second
        when = (f" (about {seconds_text(lock)} of locking for ~{self.rows:,} rows at ~{rate:,} rows/s)"
                if lock is not None else "")
        return (f"this migration ships with the installed package {self.package or 'a third-party package'}, "
                f"so its operations cannot be replaced with safemigrate's. Apply it in a maintenance window"
                f"{when}, or hold back the package upgrade until one is booked. (For your own code: "
                f"{self.finding.fix})")


def sort_key(result, position):
    """Largest expected lock first when table sizes are known; migration order otherwise."""
    seconds = result.expected_lock_seconds
    return (seconds is None, -(seconds or 0), position)


def _location(result):
    where = f"{result.app}.{result.migration}"
    size = f" [table {result.finding.table}: ~{result.rows:,} rows" if result.rows is not None else ""
    if size:
        lock = result.expected_lock_seconds
        size += f", lock ~{seconds_text(lock)}]" if lock is not None else "]"
    return where, size


def render_text(results, write, style, verbosity):
    shown = [r for r in results if r.ignore is None and (r.severity != "note" or verbosity >= 2)]
    for result in shown:
        where, size = _location(result)
        level = "" if result.severity == "error" else f" {result.severity}:"
        line = (f"{where}: [{result.rule}]{level} {result.finding.operation}: {result.finding.problem} "
                f"Safe alternative: {result.alternative}{size}")
        write(style.WARNING(line) if result.severity == "error" else line)
    counts = summary(results)
    hidden_notes = counts["notes"] if verbosity < 2 else 0
    extra = []
    if counts["ignored"]:
        extra.append(f"{counts['ignored']} ignored")
    if hidden_notes:
        extra.append(f"{hidden_notes} note(s) hidden, -v 2 shows them")
    tail = f" ({'; '.join(extra)})" if extra else ""
    risky = counts["errors"] + counts["warnings"]
    if risky:
        write(style.WARNING(f"{risky} risky finding(s): {counts['errors']} error(s), "
                            f"{counts['warnings']} warning(s).{tail}"))
    elif verbosity >= 1:
        write(style.SUCCESS(f"No risky operations found.{tail}"))


def summary(results):
    active = [r for r in results if r.ignore is None]
    return {"errors": sum(r.severity == "error" for r in active),
            "warnings": sum(r.severity == "warning" for r in active),
            "notes": sum(r.severity == "note" for r in active),
            "ignored": sum(r.ignore is not None for r in results)}


def as_json(results):
    return {
        "version": JSON_VERSION,
        "tool": {"name": "safemigrate", "version": __version__},
        "findings": [{
            "app": r.app,
            "migration": r.migration,
            "file": r.file,
            "line": r.line,
            "operation_index": r.operation_index,
            "operation": r.finding.operation,
            "rule": r.rule,
            "severity": r.severity,
            "lock": r.finding.lock,
            "table": r.finding.table,
            "rows": r.rows,
            "expected_lock_seconds": r.expected_lock_seconds,
            "reason": r.finding.problem,
            "alternative": r.alternative,
            "third_party": r.third_party,
            "ignored": None if r.ignore is None else {"source": r.ignore.source, "reason": r.ignore.reason},
        } for r in results],
        "summary": summary(results),
    }


def _uri(path):
    if path is None:
        return None
    absolute = Path(path).resolve()
    try:
        return absolute.relative_to(Path(os.getcwd()).resolve()).as_posix()
    except ValueError:
        return absolute.as_uri()


_SARIF_LEVEL = {"error": "error", "warning": "warning", "note": "note"}


def as_sarif(results):
    rules = sorted(RULES.values(), key=lambda rule: rule.id)
    index = {rule.id: i for i, rule in enumerate(rules)}
    sarif_results = []
    for r in results:
        item = {
            "ruleId": r.rule,
            "ruleIndex": index[r.rule],
            "level": _SARIF_LEVEL[r.severity],
            "message": {"text": f"{r.finding.operation}: {r.finding.problem} Safe alternative: {r.alternative}"},
            "locations": [{
                "physicalLocation": {
                    "artifactLocation": {"uri": _uri(r.file) or f"{r.app}/migrations/{r.migration}.py"},
                    "region": {"startLine": r.line or 1},
                },
                "logicalLocations": [{"fullyQualifiedName": f"{r.app}.{r.migration}[{r.operation_index}]",
                                      "kind": "member"}],
            }],
            "properties": {"lock": r.finding.lock, "table": r.finding.table, "rows": r.rows,
                           "thirdParty": r.third_party},
        }
        if r.ignore is not None:
            item["suppressions"] = [{"kind": "inSource" if r.ignore.source == "migration" else "external",
                                     "justification": r.ignore.reason}]
        sarif_results.append(item)
    return {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "safemigrate",
                "version": __version__,
                "informationUri": "https://pypi.org/project/safemigrate/",
                "rules": [{"id": rule.id, "name": rule.id, "shortDescription": {"text": rule.title},
                           "defaultConfiguration": {"level": _SARIF_LEVEL[rule.severity]}} for rule in rules],
            }},
            "results": sarif_results,
        }],
    }


def render(results, fmt, write, style, verbosity):
    if fmt == "json":
        write(json.dumps(as_json(results), indent=2))
    elif fmt == "sarif":
        write(json.dumps(as_sarif(results), indent=2))
    else:
        render_text(results, write, style, verbosity)

