"""The rehearsal's report, for people (text) and for CI (JSON), and the budgets that fail a build.

Budgets come from settings (``REHEARSE_MAX_LOCK_HOLD_MS``,
``REHEARSE_MAX_EXPAND_S``, ``REHEARSE_MAX_BACKFILL_S``) and are checked
against the figures *predicted for production size*, because that is where
they matter: a lock held 20 ms on a 1 % sample is held about 2 s on the real
table if the statement scans it. Each violation names the step.

Exit statuses: 0 the rehearsal passed (and every budget held), 1 a step
failed or a check found a difference, 2 bad input (see the command), 3 every
step passed but a budget was exceeded.
"""

from ..conf import conf

PASSED, FAILED, USAGE, OVER_BUDGET = 0, 1, 2, 3


def check_budgets(result):
    """Add ``result["budgets"]`` (one entry per budget set) and return the violations."""
    budgets = []
    steps = result.get("steps", [])
    limit = conf.rehearse_max_lock_hold_ms
    if limit is not None:
        holds = [(h["predicted_ms"], step, h) for step in steps if step["phase"] != "rollout"
                 for h in step["locks"] if h["blocking"]]
        over = [(ms, step, h) for ms, step, h in holds if ms > limit]
        worst = max(holds, key=lambda item: item[0], default=None)
        for ms, step, hold in sorted(over, key=lambda item: -item[0]):
            budgets.append(_entry("REHEARSE_MAX_LOCK_HOLD_MS", limit, ms, step["id"], False,
                                  f"{step['id']} holds {hold['mode']} on {hold['relation']} for ~{_ms(ms)} at "
                                  f"production size ({hold['basis']}); the budget is {_ms(limit)}"))
        if not over:
            budgets.append(_entry("REHEARSE_MAX_LOCK_HOLD_MS", limit, worst[0] if worst else 0.0,
                                  worst[1]["id"] if worst else None, True,
                                  f"longest blocking lock ~{_ms(worst[0])} ({worst[1]['id']}, {worst[2]['mode']} on "
                                  f"{worst[2]['relation']})" if worst else "no blocking lock taken"))
    limit = conf.rehearse_max_expand_s
    if limit is not None:
        expand = next((p for p in result.get("phases", []) if p["name"] == "expand"), None)
        value = expand["predicted_seconds"] if expand else 0.0
        slowest = max((s for s in steps if s["phase"] == "expand"), key=lambda s: s["predicted"]["seconds"],
                      default=None)
        name = slowest["id"] if slowest else None
        budgets.append(_entry("REHEARSE_MAX_EXPAND_S", limit, value, name, value <= limit,
                              f"expand takes ~{_seconds(value)} at production size"
                              + (f", most of it in {name}" if name else "") + f"; the budget is {_seconds(limit)}"))
    limit = conf.rehearse_max_backfill_s
    if limit is not None:
        fills = [s for s in steps if s["backfill"]]
        over = [s for s in fills if s["backfill"]["predicted_seconds"] > limit]
        for step in over:
            value = step["backfill"]["predicted_seconds"]
            budgets.append(_entry("REHEARSE_MAX_BACKFILL_S", limit, value, step["id"], False,
                                  f"{step['id']} backfills for ~{_seconds(value)} at production size "
                                  f"({step['backfill']['basis']}); the budget is {_seconds(limit)}"))
        if not over:
            worst = max(fills, key=lambda s: s["backfill"]["predicted_seconds"], default=None)
            value = worst["backfill"]["predicted_seconds"] if worst else 0.0
            budgets.append(_entry("REHEARSE_MAX_BACKFILL_S", limit, value, worst["id"] if worst else None, True,
                                  f"longest backfill ~{_seconds(value)}" + (f" ({worst['id']})" if worst else "")))
    result["budgets"] = budgets
    return [b for b in budgets if not b["ok"]]


def _entry(setting, limit, value, step, ok, message):
    return {"setting": setting, "limit": limit, "value": round(value, 3), "step": step, "ok": ok, "message": message}


def exit_status(result):
    if result.get("failures"):
        return FAILED
    if any(not b["ok"] for b in result.get("budgets", [])):
        return OVER_BUDGET
    return PASSED


# -- text ----------------------------------------------------------------------------------------

def _seconds(value):
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def _ms(value):
    return _seconds(value / 1000.0)


def _bytes(value):
    value = float(value or 0)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def render_text(result, write):
    release = result.get("release", {})
    source = result.get("source", {})
    migrations = release.get("migrations", [])
    stages = release.get("stages", {})
    write(f"Rehearsal of {len(migrations)} migration(s): "
          + ", ".join(f"{m} ({stages.get(m, '?')})" for m in migrations))
    where = {"sample": f"a {source.get('sample_percent') or 0:g} % sample of {source.get('name')!r}",
             "template": f"a copy of database {source.get('template')!r}",
             "clone": "a clone made by REHEARSE_CLONE_COMMAND"}.get(source.get("mode"), "?")
    scratch = result.get("scratch", {})
    write(f"On {where} (schema from {source.get('schema_from', '?')}); scratch database {scratch.get('name')} "
          f"({'kept' if scratch.get('kept') else 'dropped at the end'})")
    if release.get("catch_up"):
        write(f"Applied first, not measured: {', '.join(release['catch_up'])}")
    if release.get("rollback_note"):
        write(f"Rollback: {release['rollback_note']}")
    touched = {s["table"] for step in result.get("steps", []) for s in step["statements"] if s["table"]}
    tables = [t for t in result.get("tables", []) if t["table"] in touched]
    if tables:
        write("")
        write("Tables the release works on (production rows from the source's statistics):")
        width = max(len(t["table"]) for t in tables)
        for t in tables:
            write(f"  {t['table']:<{width}}  {t['source_rows']:>14,} rows ({t['basis']})  rehearsed on "
                  f"{t['rehearsed_rows']:,}  x{t['scale']:,.1f}")
    steps = {s["id"]: s for s in result.get("steps", [])}
    write("")
    write(f"{'Steps':<58}{'measured':>10}  {'predicted':>10}")
    for phase in result.get("phases", []):
        status = "" if phase["status"] == "ok" else f"  [{phase['status'].upper()}]"
        write(f"{phase['name']}{status}" + (f" ({phase['note']})" if phase.get("note") else ""))
        for step_id in phase["steps"]:
            _render_step(steps[step_id], write)
    if result.get("checks"):
        write("")
        write("Checks:")
        for check in result["checks"]:
            write(f"  {'ok    ' if check['ok'] else 'FAILED'} {check['name']}")
            for line in check["differences"][:10]:
                write(f"         {line}")
    ranked = sorted((s for s in steps.values() if s["phase"] != "rollout"),
                    key=lambda s: -s["predicted"]["seconds"])[:5]
    if ranked:
        write("")
        write("Slowest steps at production size:")
        for number, step in enumerate(ranked, 1):
            write(f"  {number}. {step['id']}: ~{_seconds(step['predicted']['seconds'])} "
                  f"(measured {_seconds(step['measured']['seconds'])}; {step['predicted']['basis']})")
    predicted = result.get("predicted")
    if predicted:
        write("")
        background = predicted.get("background_seconds")
        copies = f", background copies {_seconds(background)} (inline rate)" if background else ""
        write(f"Predicted at production size: expand {_seconds(predicted['expand_seconds'])}{copies}, contract "
              f"{_seconds(predicted['contract_seconds'])}, rollback {_seconds(predicted['rollback_seconds'])}; "
              f"longest blocking lock {_ms(predicted['max_lock_hold_ms'])}; longest backfill "
              f"{_seconds(predicted['backfill_seconds'])}")
    if result.get("budgets"):
        write("")
        write("Budgets:")
        for budget in result["budgets"]:
            write(f"  {'ok          ' if budget['ok'] else 'OVER BUDGET '} {budget['setting']}: {budget['message']}")
    if result.get("notes"):
        write("")
        write("Notes:")
        for note in result["notes"]:
            write(f"  - {note}")
    write("")
    if result.get("failures"):
        write("REHEARSAL FAILED:")
        for failure in result["failures"]:
            for line in failure.splitlines():
                write(f"  {line}")
    elif any(not b["ok"] for b in result.get("budgets", [])):
        write("Rehearsal passed, but over budget.")
    else:
        write("Rehearsal passed.")


def _render_step(step, write):
    name = step["migration"] or "old and new code writing"
    flag = "" if step["status"] == "ok" else "  FAILED"
    write(f"  {name:<56}{_seconds(step['measured']['seconds']):>10}  ~{_seconds(step['predicted']['seconds']):>9}"
          f"{flag}")
    write(f"      basis: {step['predicted']['basis']}")
    for hold in [h for h in step["locks"] if h["blocking"]][:4]:
        measured = f"{_ms(hold['measured_ms'])}" if hold["sampled"] else "< 1 sample"
        write(f"      lock: {hold['mode']} on {hold['relation']} held {measured}, ~{_ms(hold['predicted_ms'])} "
              f"at production size")
    backfill = step.get("backfill")
    if backfill:
        write(f"      backfill: {backfill['rows']:,} rows in {backfill['batches']} batches, p50 "
              f"{backfill['p50_ms']:.0f} ms, p95 {backfill['p95_ms']:.0f} ms; ~{backfill['predicted_batches']:,} "
              f"batches, ~{_seconds(backfill['predicted_seconds'])} at production size")
    for rewrite in step["measured"]["rewrites"]:
        write(f"      rewrote {rewrite['kind']} {rewrite['relation']} ({_bytes(rewrite['bytes_before'])} -> "
              f"{_bytes(rewrite['bytes_after'])})")
    measured, predicted = step["measured"], step["predicted"]
    rows = sum(measured["rows"].values())
    write(f"      WAL {_bytes(measured['wal_bytes'])} (~{_bytes(predicted['wal_bytes'])}), temp "
          f"{_bytes(measured['temp_bytes'])} (~{_bytes(predicted['temp_bytes'])}), rows {rows:,} "
          f"(~{predicted['rows']:,})")
    for warning in step.get("warnings", [])[:3]:
        write(f"      note: {warning}")
    if step.get("error"):
        write(f"      error: {step['error']}")
    for row in step.get("failing_rows", []):
        write(f"      rows of {row['table']} that do not fit: {', '.join(str(k) for k in row['rows'])}"
              f"{' and more' if row['count'] > len(row['rows']) else ''} ({row['count']}): {row['problem']}")
