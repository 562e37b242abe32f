"""From a rehearsal on a small copy to production size: each measured figure scaled, with its basis.

Every statement the rehearsal measured is put in one class by what its cost
grows with, and scaled by the table it works on:

- **index builds** (``CREATE INDEX`` with or without ``CONCURRENTLY``, unique
  and primary key constraints that build their index, ``REINDEX``): sorting
  n keys costs n·log n, so the sorting time scales by ``(N ln N) / (n ln n)``;
  the phases of the build (``pg_stat_progress_create_index``, sampled with the
  locks) tell sorting from scanning and loading (linear) and from the waits of
  ``CONCURRENTLY`` (as measured); without phase samples the whole build scales
  n·log n;
- **row work** (``INSERT``/``UPDATE``/``DELETE``/``COPY``, the backfill
  batches, ``SELECT`` over a user table) and **scans** (``VALIDATE
  CONSTRAINT``, ``SET NOT NULL`` without a proving CHECK, a constraint added
  without ``NOT VALID``) and **rewrites** (a type change that got a new
  relfilenode): linear, ``N / n``;
- **catalog changes** (everything else: ``ADD COLUMN``, renames, triggers,
  ``DROP``): as measured.

``N`` is the source table's rows from its statistics (``reltuples``, or its
size over the sample's bytes per row when never analysed) and ``n`` the rows
the scratch copy held before the release ran. A table the release creates
has no rows in production either: as measured. Time between statements in a
step stays as measured, except between backfill batches (the replica check,
pauses), which grows with the number of batches. A lock hold scales
by the statements that ran while it was held. Temp bytes of an index build
are predicted from the index size at production size against
``maintenance_work_mem``: a sort that fits writes no temp files, one that
does not spills about its data; both cases are named in the basis.
"""

import math
import re
from dataclasses import dataclass

from ..pg.classify import classify as classify_sql
from ..pg.measure import BLOCKING

INDEX, LINEAR, CATALOG = "index build", "linear", "catalog"


@dataclass
class Factor:
    table: str
    source_rows: float
    scratch_rows: float
    basis: str

    @property
    def linear(self):
        if self.scratch_rows <= 0:
            return 1.0
        return max(self.source_rows, self.scratch_rows) / self.scratch_rows

    @property
    def nlogn(self):
        n, big = max(self.scratch_rows, 2.0), max(self.source_rows, self.scratch_rows, 2.0)
        return (big * math.log(big)) / (n * math.log(n))

    def describe(self):
        return f"{self.table}: {self.source_rows:,.0f} rows ({self.basis}) / {self.scratch_rows:,.0f} rehearsed"


def factors(source_sizes, scratch_rows, scratch_sizes=None):
    """``{table: Factor}`` from the source's statistics and the rows the scratch copy holds."""
    out = {}
    for table, size in source_sizes.items():
        rows_here = scratch_rows.get(table)
        if rows_here is None:
            continue
        if size.analysed:
            out[table] = Factor(table, size.rows, rows_here, "reltuples")
            continue
        here = (scratch_sizes or {}).get(table)
        if here is not None and here.bytes and rows_here:
            rows = size.bytes / (here.bytes / rows_here)
            out[table] = Factor(table, rows, rows_here, "never analysed: size / bytes per row of the copy")
        else:
            out[table] = Factor(table, rows_here, rows_here, "never analysed and no size: as measured")
    return out


_FROM = re.compile(r'\bFROM\s+((?:"[^"]+"|[\w$]+)(?:\.(?:"[^"]+"|[\w$]+))?)', re.I)


def _select_table(text, known):
    for match in _FROM.finditer(text):
        name = match.group(1).replace('"', "")
        name = name[7:] if name.startswith("public.") else name
        if name in known:
            return name
    return None


#: What the SQL-text classifier says an undeclared index build does under its lock.
_INDEX_WORK = ("builds the index", "builds a unique index", "rebuilds indexes")


def cost_class(record, rewritten, known):
    """``(kind, table)`` of a measured statement (see the module docstring).

    A statement safemigrate declared (``pg.statements``) says itself whether
    it builds an index (``index``) or holds its lock through work (``work``);
    its text may look like a scan it never does (``SET NOT NULL`` once a
    validated CHECK proves it). The rest is read by the SQL-text classifier
    (``pg.classify``), plus what that one leaves out because it blocks no
    traffic: builds and validations that run CONCURRENTLY still cost time.
    """
    text = record.sql
    upper = text.upper()
    head = upper.split(" ", 1)[0]
    table = record.table
    if head in ("SELECT", "WITH") and table not in known:
        table = _select_table(text, known)
    statement = record.statement
    if statement is not None:
        work = getattr(statement, "work", None)
        builds_index = getattr(statement, "index", None) is not None
    elif record.declared:
        work, builds_index = None, False
    else:
        work = classify_sql(text).work
        builds_index = work in _INDEX_WORK
        work = None if work and work.startswith("may ") else work  # an in-place TYPE change: the relfilenode tells
    if builds_index or re.match(r"CREATE (UNIQUE )?INDEX", upper) or head == "REINDEX":
        return INDEX, table
    if head in ("INSERT", "UPDATE", "DELETE", "COPY", "MERGE"):
        return LINEAR, table
    if head in ("SELECT", "WITH"):
        return (LINEAR, table) if table else (CATALOG, None)
    if work or table in rewritten or (head == "ALTER" and "VALIDATE CONSTRAINT" in upper):
        return LINEAR, table
    if head in ("CLUSTER", "VACUUM", "ANALYZE", "REFRESH"):
        return LINEAR, table
    return CATALOG, table


def scale_of(kind, table, factor_map):
    """``(multiplier, basis)`` for a statement of ``kind`` on ``table``."""
    if kind == CATALOG:
        return 1.0, "catalog change: as measured"
    factor = factor_map.get(table)
    if factor is None:
        return 1.0, f"{kind} on {table or 'no user table'}, a table the release creates (no rows in production yet)" \
            if table else f"{kind}: as measured"
    if kind == INDEX:
        return factor.nlogn, f"index build: n·log n in {factor.describe()} = x{factor.nlogn:,.1f}"
    return factor.linear, f"{kind} in {factor.describe()} = x{factor.linear:,.1f}"


def _phase_kind(phase):
    if "sorting" in phase:
        return "sort"
    if phase.startswith("waiting") or phase == "initializing":
        return "wait"
    return "linear"


def index_build(record, factor, phases):
    """``(seconds, basis)`` of an index build from its phases, or None without phase samples.

    ``pg_stat_progress_create_index`` tells the phases apart: only sorting
    costs n·log n; scanning the table and loading the tree are linear; the
    waits of ``CONCURRENTLY`` for older transactions do not grow with the
    table (on the idle scratch database they are short, and in production
    they last as long as the longest transaction then running).

    The phases tile the time the view showed a build (bounds halfway between
    samples, ``LockSampler._phase``); the rest of the statement's time, when
    it showed none, is the commits and catalog work between the phases of
    ``CONCURRENTLY``, which do not grow with the table, so it counts as
    measured. Sharing that time out like the work instead over-predicted
    10M-row builds by 10-32 % on a quiet machine: on a 1 % sample it is a
    fifth of a 0.1 s build.
    """
    steady, timed = repeated(record)
    parts = {"sort": 0.0, "linear": 0.0, "wait": 0.0}
    for phase, first, last in phases:
        for start, end in record.spans:
            low, high = max(start, first), min(end, last)
            if high > low:
                parts[_phase_kind(phase)] += high - low
    if not any(parts.values()):
        return None
    fixed = max(0.0, record.seconds - sum(parts.values()))
    sort, linear, wait = parts["sort"] * steady, parts["linear"] * steady, parts["wait"] + fixed
    seconds = sort * factor.nlogn + linear * factor.linear + wait
    basis = (f"index build in {factor.describe()}: sorting {sort:.2f} s x{factor.nlogn:,.1f} (n·log n), "
             f"scanning and loading {linear:.2f} s x{factor.linear:,.1f} (linear), waiting and committing "
             f"{wait:.2f} s as measured ({fixed:.2f} s of it with no build phase in progress){timed}")
    return seconds, basis


def repeated(record):
    """``(factor, words)``: the fastest of the build's times over its own, from ``record.repeats``.

    ``planning.rebuilds`` times a short build again after the release; the
    work the estimate multiplies is taken at the fastest of the three runs
    (see ``planning.rebuilds`` for why the fastest), so one slow run is not
    scaled a hundredfold. ``(1.0, "")`` when the build was timed once.
    """
    if not record.repeats or not record.count or record.seconds <= 0:
        return 1.0, ""
    own = record.seconds / record.count
    times = [own, *record.repeats]
    fastest = min(times)
    listed = ", ".join(f"{t:.3f}" for t in times)
    return fastest / own, (f"; built {len(times)} times on the copy ({listed} s): its work taken at the "
                           f"fastest, x{fastest / own:.2f} of this run")


@dataclass
class StatementEstimate:
    kind: str
    table: "str | None"
    scale: float
    basis: str
    seconds: float


def _split(spans, windows, span):
    """Seconds of ``spans`` inside a batch, between batches (within ``span``), and outside the backfill."""
    inside = between = outside = 0.0
    for start, end in spans:
        length = end - start
        middle = (start + end) / 2
        if any(low <= middle <= high for low, high in windows):
            inside += length
        elif span and span[0] <= middle <= span[1]:
            between += length
        else:
            outside += length
    return inside, between, outside


def estimate_step(step, factor_map, memory):
    """Predictions for one ``StepMeasurement``: a dict ready for the report.

    Statements are scaled one by one; a backfill's batches are replaced by
    ``backfill_model`` and the time between them (the replica check, pauses)
    grows with the number of batches.
    """
    rewritten = {r["table"] for r in step.rewrites if r["kind"] == "table"}
    known = set(factor_map)
    windows = [(batch[3] - batch[1], batch[3]) for batch in step.batches if len(batch) > 3]
    span = (min(w[0] for w in windows), max(w[1] for w in windows)) if windows else None
    statements, wal, outside_traced, predicted = [], 0.0, 0.0, 0.0
    per_record = {}
    for record in step.statements.values():
        kind, table = cost_class(record, rewritten, known)
        scale, basis = scale_of(kind, table, factor_map)
        linear = factor_map[table].linear if kind != CATALOG and table in factor_map else 1.0
        phased = index_build(record, factor_map[table], step.index_phases) \
            if kind == INDEX and table in factor_map and step.index_phases else None
        if phased:
            scale = phased[0] / record.seconds if record.seconds else 1.0
            basis = phased[1]
        elif kind == INDEX and table in factor_map:
            steady, timed = repeated(record)
            scale, basis = scale * steady, basis + timed
        estimate = StatementEstimate(kind, table, scale, basis, record.seconds * scale)
        per_record[id(record)] = estimate
        statements.append((record, estimate))
        if record.container:
            continue
        wal += record.wal_bytes * linear
        _inside, _between, outside = _split(record.spans, windows, span)
        outside_traced += outside
        predicted += outside * scale
    # The table a backfill works through: its batch statements are row work on it.
    batch_tables = {e.table for r, e in statements if e.kind == LINEAR and e.table in factor_map
                    and r.sql.split(" ", 1)[0].upper() in ("UPDATE", "INSERT", "DELETE")}
    backfill = backfill_model(step, batch_tables, factor_map)
    backfill_span = (span[1] - span[0]) if span else 0.0
    if backfill:
        predicted += backfill["seconds"]
        between = max(0.0, backfill_span - backfill["measured_seconds"])
        predicted += between * (backfill["batches"] / max(1, len(step.batches)))
    untraced = max(0.0, step.seconds - backfill_span - outside_traced)
    predicted += untraced
    main = max(statements, key=lambda pair: 0 if pair[0].container else pair[1].seconds, default=None)
    basis = main[1].basis if main else "between statements: as measured"
    if backfill and backfill["seconds"] > 0.5 * predicted:
        basis = backfill["basis"]
    untraced_wal = max(0, step.wal_bytes - sum(r.wal_bytes for r in step.statements.values() if not r.container))
    temp, temp_basis = _temp(step, statements, factor_map, memory)
    return {
        "seconds": predicted,
        "basis": basis,
        "backfill": backfill,
        "wal_bytes": int(wal + untraced_wal),
        "temp_bytes": int(temp),
        "temp_basis": temp_basis,
        "rows": _rows(step, factor_map),
        "statements": {id(record): estimate for record, estimate in statements},
        "holds": [_hold(hold, step, per_record, factor_map) for hold in step.holds],
    }


def backfill_model(step, batch_tables, factor_map):
    """Backfill time at production size: the ramp-up as measured, then the steady rate for the rest.

    A batch starts at ``BATCH_INITIAL_SIZE`` rows and grows towards
    ``BATCH_TARGET_MS``; on a small copy those first, small batches are a
    large share of all of them, so scaling the total linearly overstates the
    time. Here the second half of the batches gives the steady rate (rows/s),
    the first half is taken as measured, and the rows left at production size
    go at the steady rate.
    """
    if not step.batches:
        return None
    table = max(batch_tables, key=lambda t: factor_map[t].linear) if batch_tables else None
    scale = factor_map[table].linear if table else 1.0
    seconds = [batch[1] for batch in step.batches]
    rows = [batch[2] for batch in step.batches]
    half = len(seconds) // 2
    steady_rows, steady_seconds = sum(rows[half:]), sum(seconds[half:])
    measured = sum(seconds)
    total_rows = sum(rows) * scale
    if not table or scale == 1.0 or not steady_rows or not steady_seconds:
        return {"seconds": measured * scale, "measured_seconds": measured, "scale": scale, "table": table,
                "rows": int(total_rows), "batches": int(len(seconds) * scale),
                "basis": "as measured" if scale == 1.0 else f"linear in {factor_map[table].describe()}"}
    rate = steady_rows / steady_seconds
    ramp_rows, ramp_seconds = sum(rows[:half]), sum(seconds[:half])
    rest = max(0.0, total_rows - ramp_rows)
    steady_batch = steady_rows / max(1, len(seconds) - half)
    return {"seconds": ramp_seconds + rest / rate, "measured_seconds": measured, "scale": scale, "table": table,
            "rows": int(total_rows), "batches": half + int(rest / steady_batch + 0.999),
            "basis": (f"backfill of {total_rows:,.0f} rows ({factor_map[table].describe()}): the first {half} "
                      f"batches as measured, the rest at the steady {rate:,.0f} rows/s of the later batches")}


def _rows(step, factor_map):
    total = 0.0
    for table, counts in step.table_rows.items():
        scale = factor_map[table].linear if table in factor_map else 1.0
        total += sum(counts.values()) * scale
    return int(total)


def _temp(step, statements, factor_map, memory):
    builds = [(r, e) for r, e in statements if e.kind == INDEX and e.table in factor_map]
    if not builds:
        scale = max((e.scale for _r, e in statements if e.kind == LINEAR), default=1.0)
        return step.temp_bytes * scale, ("as measured" if scale == 1.0 else f"linear: x{scale:,.1f}")
    limit = memory.get("maintenance_work_mem") or 64 << 20
    sizes = {}
    for relation in step.new_relations + [{"kind": r["kind"], "table": r["table"], "bytes": r["bytes_after"]}
                                          for r in step.rewrites]:
        if relation["kind"] == "index":
            sizes[relation["table"]] = sizes.get(relation["table"], 0) + relation["bytes"]
    total, notes = 0.0, []
    for record, estimate in builds:
        factor = factor_map[estimate.table]
        index_bytes = sizes.get(estimate.table) or 0
        production = index_bytes * factor.linear
        if production > limit:
            total += production
            notes.append(f"index on {estimate.table}: ~{production / 2**20:,.0f} MB to sort > maintenance_work_mem "
                         f"{limit / 2**20:,.0f} MB: spills about that much")
        else:
            notes.append(f"index on {estimate.table}: ~{production / 2**20:,.1f} MB to sort fits in "
                         f"maintenance_work_mem {limit / 2**20:,.0f} MB: no temp files")
    return total, "; ".join(notes)


def _hold(hold, step, per_record, factor_map):
    extra, scaled = 0.0, False
    for record in step.statements.values():
        if record.container:
            continue
        estimate = per_record[id(record)]
        if estimate.scale == 1.0:
            continue
        for start, end in record.spans:
            overlap = min(end, hold.last) - max(start, hold.first)
            if not hold.sampled and hold.relation and (hold.relation, hold.mode) in record.locks:
                overlap = end - start
            if overlap > 0:
                extra += overlap * (estimate.scale - 1)
                scaled = True
    predicted = hold.seconds + extra
    # A relation this step created had no traffic to block.
    new = hold.relation in {relation["relation"] for relation in step.new_relations}
    return {
        "relation": hold.relation,
        "mode": hold.mode_name,
        "blocking": hold.mode in BLOCKING and not new,
        "measured_ms": round(hold.seconds * 1000, 1),
        "sampled": hold.sampled,
        "predicted_ms": round(predicted * 1000, 1),
        "basis": "scaled by the statements that ran while it was held" if scaled else "as measured",
    }
