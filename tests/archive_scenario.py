"""A contract undone under traffic: contract -> new code writes -> reverse -> ``archive restore`` -> old code.

Built on ``testproject.scenario`` (real ``manage.py`` commands in subprocesses,
ORM traffic of each code version in its own process, blockers holding
ACCESS SHARE on the tables for 1.2 s at a time):

1. the old code's schema and rows; ``makemigrations --safe`` and ``migrate``
   under old-code traffic; the rollout (both versions);
2. a snapshot of what the old code sees (no traffic runs at that moment);
3. under new-code traffic: ``migrate_contract`` (which archives), the
   contract migration reversed (``migrate <app> <last expand migration>``),
   ``archive restore`` of everything it archived;
4. the old code again, reading and writing the restored columns or table.

The result says whether every snapshot row is back as it was (rows the new
code wrote in between keep what it wrote), what ``archive restore`` reported,
and every traffic request's outcome and wait.
"""

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field

import psycopg

from testproject.scenario import Blocker, Scenario, ScenarioSpec, Version
from testproject.scenarios import FILL, NAME, POINTS, SCENARIOS, models_py


@dataclass
class UndoSpec:
    #: The scenario whose contract is undone.
    scenario: ScenarioSpec
    #: Table and columns of the old code's view to snapshot and compare.
    table: str
    columns: list
    #: Columns the new code never writes: every snapshot row must have them back exactly.
    untouched: list = field(default_factory=list)
    #: Per code version, the model its traffic uses (default: the scenario's).
    models: dict = field(default_factory=dict)
    #: Extra SQL run after the fill (formatted with ``rows``).
    extra_fill: str = ""
    #: Tables a blocker keeps taking ACCESS SHARE on (default: the scenario's table).
    blocked: tuple = ()


NOTE = 'class Note(models.Model):\n    title = models.CharField(max_length=50)\n' \
       '    item = models.ForeignKey(Item, models.CASCADE, null=True)\n'

DELETE_MODEL = ScenarioSpec(
    name="delete_model",
    old=Version(models_py(NAME, POINTS) + "\n\n" + NOTE, {"title": "f'old-{i}'"}, {"title": "f'old-upd-{i}'"},
                ["title"]),
    new=Version(models_py(NAME, POINTS), {"name": "f'new-{i}'", "points": "1"}, {"name": "f'new-upd-{i}'"},
                ["name"]),
    fill_sql=FILL.format(extra="", extra_values=""),
    expect_old={}, expect_new={"name": "v['name']"},
)

UNDO = {
    "remove_field": UndoSpec(SCENARIOS["remove_field"], "zdtapp_item", ["name", "points", "legacy"],
                             untouched=["legacy"]),
    # A rename through a copy archives its old column (a rename through a view drops nothing).
    "rename_field": UndoSpec(dataclasses.replace(SCENARIOS["rename_field"], settings={"RENAME_STRATEGY": "copy"}),
                             "zdtapp_item", ["name", "points"]),
    "narrow_type": UndoSpec(SCENARIOS["narrow_type"], "zdtapp_item", ["name", "points"]),
    "bigint_primary_key": UndoSpec(SCENARIOS["bigint_primary_key"], "zdtapp_item", ["name", "points"]),
    "delete_model": UndoSpec(DELETE_MODEL, "zdtapp_note", ["title", "item_id"], untouched=["title", "item_id"],
                             models={"old": "Note", "new": "Item"},
                             extra_fill="INSERT INTO zdtapp_note (title, item_id) "
                                        "SELECT 'note' || i, i FROM generate_series(1, {rows}) i",
                             blocked=("zdtapp_note",)),
}


@dataclass
class UndoResult:
    scenario: object
    snapshot_rows: int = 0
    written_between: set = field(default_factory=set)
    lost: list = field(default_factory=list)  # (pk, column, before, after)
    archives: list = field(default_factory=list)
    restores: list = field(default_factory=list)
    extra_blocker_holds: int = 0


class TableBlocker(Blocker):
    """``Blocker`` for a table that the contract moves away and the restore brings back.

    While the table is in the archive schema there is nothing to block under
    its name; the blocker waits and takes hold again once it is back.
    """

    def run(self):
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stopping.is_set():
                if conn.execute("SELECT to_regclass(%s) IS NOT NULL", [f'"{self.table}"']).fetchone()[0]:
                    with conn.transaction():
                        conn.execute(f'SELECT count(*) FROM (SELECT 1 FROM "{self.table}" LIMIT 1) s')
                        self.stopping.wait(self.hold)
                    self.holds += 1
                self.stopping.wait(self.gap)


class UndoScenario(Scenario):
    def __init__(self, undo, rows=20_000, **kwargs):
        super().__init__(undo.scenario, rows=rows, echo=kwargs.pop("echo", None), **kwargs)
        self.undo = undo
        self.undo_result = UndoResult(self.result)

    def _start_traffic(self, version, phase):
        spec = self.spec
        if version in self.undo.models:
            self.spec = dataclasses.replace(spec, model=self.undo.models[version])
        try:
            return super()._start_traffic(version, phase)
        finally:
            self.spec = spec

    def _snapshot(self, dsn):
        columns = ", ".join(f'"{c}"' for c in self.undo.columns)
        with psycopg.connect(dsn) as conn:
            rows = conn.execute(f'SELECT id, {columns} FROM "{self.undo.table}"').fetchall()
        return {row[0]: dict(zip(self.undo.columns, row[1:])) for row in rows}

    def run_undo(self):
        result, undo_result = self.result, self.undo_result
        admin = self._server_dsn("postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.dbname}"')
        self._write_tree()
        blockers, running = [], []
        try:
            self.manage("makemigrations (old code)", "makemigrations", "zdtapp", "--noinput", version="old")
            self.manage("migrate (old code)", "migrate", "--noinput", "--all-stages", version="old")
            dsn = self._server_dsn(self.dbname)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(self.spec.fill_sql.format(table=self.spec.table, rows=self.rows))
                if self.undo.extra_fill:
                    conn.execute(self.undo.extra_fill.format(rows=self.rows))
                conn.execute("ANALYZE")
            for table in self.undo.blocked or (self.spec.table,):
                blockers.append(TableBlocker(dsn, table, hold=self.blocker_hold))
                blockers[-1].start()
            running.append(self._start_traffic("old", "during migrate"))
            before = {p.name for p in (self.root / "zdt_migrations").glob("0*.py")}
            self.manage("makemigrations --safe", "makemigrations", "zdtapp", "--safe", stdin=self.spec.answers)
            new_files = sorted(p for p in (self.root / "zdt_migrations").glob("0*.py") if p.name not in before)
            for path in new_files:
                result.migration_files[path.name] = path.read_text()
            contract = [p.stem for p in new_files if 'stage = "contract"' in p.read_text()]
            expand = [p.stem for p in new_files if p.stem not in contract]
            self.manage("migrate (expand)", "migrate", "--noinput")
            running.append(self._start_traffic("new", "rollout"))
            time.sleep(self.rollout_seconds)
            for handle in list(running):
                running.remove(handle)
                self._stop_traffic(handle)
            snapshot = self._snapshot(dsn)
            undo_result.snapshot_rows = len(snapshot)
            running.append(self._start_traffic("new", "contract, reverse, restore"))
            self.manage("migrate_contract", "migrate_contract", "--noinput", live=True)
            time.sleep(0.5)  # the new code writes on the contracted schema
            target = expand[-1] if expand else None
            self.manage("reverse the contract", "migrate", "zdtapp", target, "--noinput", live=True)
            listing = json.loads(self.manage("archive list", "archive", "list", "--all", "--json").output)
            undo_result.archives = [a for a in listing if a["migration"] in contract]
            ids = [str(a["id"]) for a in undo_result.archives]
            if ids:
                out = self.manage("archive restore", "archive", "restore", *ids, "--json").output
                undo_result.restores = json.loads(out[out.index("["):])
            time.sleep(0.3)
            for handle in list(running):
                running.remove(handle)
                summary = self._stop_traffic(handle)
                for pk, _ in summary.created:
                    undo_result.written_between.add(pk)
                undo_result.written_between.update(int(pk) for pk in summary.updated)
            after = self._snapshot(dsn)  # before the old code writes again
            running.append(self._start_traffic("old", "after restore"))
            time.sleep(self.rollout_seconds)
            for handle in list(running):
                running.remove(handle)
                self._stop_traffic(handle)
            for blocker in blockers:
                blocker.stop()
            result.blocker_holds = blockers[0].holds
            undo_result.extra_blocker_holds = sum(b.holds for b in blockers[1:])
            for pk, values in snapshot.items():
                for column, value in values.items():
                    written = pk in undo_result.written_between and column not in self.undo.untouched
                    found = after.get(pk, {}).get(column, "<row missing>")
                    if not written and found != value:
                        undo_result.lost.append((pk, column, value, found))
        finally:
            for handle in running:
                try:
                    self._stop_traffic(handle)
                except Exception as exc:  # noqa: BLE001 - report and go on cleaning up
                    result.failures.append(str(exc))
            for blocker in blockers:
                if blocker.is_alive():
                    blocker.stop()
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')
            if not self.keep:
                shutil.rmtree(self.root, ignore_errors=True)
        return undo_result

