"""How close ``rehearse --sample`` estimates come to a full-size run.

    python benchmarks/rehearse.py [--rows 10000000] [--sample 1] [--cases rename,rename_copy,type,index,backfill]

One source table of ``--rows`` rows; for each case a release (written by
``makemigrations --safe`` from a model change, or by hand for the backfill)
is rehearsed twice on the same source: on a ``--sample`` percent sample,
whose figures are scaled to production size, and on a full copy
(``--from-template``), which measures at full size. Both runs are measured
the same way (the rollout and the rollback are left out: they are not what
the estimates are about; a copy expand enqueues for the background counts: the
rehearsal's background phase runs it between expand and contract). Printed per
case: the predicted expand, background and contract time from the sample, the
measured time of the full run, and the error; the last line is ``max_abs_error_pct=<worst case>``. The target is
within 30 %.

Cases: ``rename`` (a column renamed with the default strategy: a rename
window, catalog changes only, so O(1)), ``rename_copy`` (the same rename with
``RENAME_STRATEGY = "copy"``: add column, dual-write trigger, batched backfill,
contract archives the old column), ``type`` (int ->
bigint through a shadow column, swapped at expand), ``index`` (an index built
``CONCURRENTLY``), ``backfill`` (a new column filled by a ``Backfill``).

Check it at a small size first: ``--rows 1000000 --sample 10``.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.scratch_project import RehearseProject  # noqa: E402

BASE = """
from django.db import models


class Item(models.Model):
    name = models.CharField(max_length=40)
    qty = models.IntegerField(default=0)
    amount = models.IntegerField(default=0)
    payload = models.TextField(null=True)
"""

CASES = {
    "rename": {"models": BASE.replace("    name = ", "    title = "), "answers": "y\ny\n"},
    # The same rename with RENAME_STRATEGY "copy": a new column, dual-write trigger, batched copy.
    "rename_copy": {"models": BASE.replace("    name = ", "    title = "), "answers": "y\ny\n",
                    "safemigrate": {"RENAME_STRATEGY": "copy"}},
    "type": {"models": BASE.replace("amount = models.IntegerField", "amount = models.BigIntegerField")},
    "index": {"models": BASE.replace("qty = models.IntegerField(default=0)",
                                     "qty = models.IntegerField(default=0, db_index=True)")},
    "backfill": {"migration": """
from django.db import migrations, models
from safemigrate.operations import Backfill


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("rhapp", "0001_initial")]
    operations = [
        migrations.AddField("item", "label", models.CharField(max_length=40, null=True)),
        Backfill("item", set={"label": '"name"'}, where='"label" IS NULL'),
    ]
"""},
}


def rehearse(project, case, *args):
    started = time.monotonic()
    result = project.run("rehearse", *args, "--rollout", "0", "--rollback-from", "none", "--format", "json",
                         "--verbosity", "0", check=False, timeout=24 * 3600, safemigrate=CASES[case].get("safemigrate"))
    if result.returncode not in (0, 3):
        log = Path(f"rehearse-{case}-failed.log").resolve()
        log.write_text(f"{result.stdout}\n----- stderr -----\n{result.stderr}")
        raise SystemExit(f"rehearse {' '.join(args)} failed (exit {result.returncode}); its whole output is in "
                         f"{log}. Last lines:\n{result.stderr[-3000:]}")
    report = json.loads(result.stdout)
    report["wall"] = time.monotonic() - started
    return report


def phase(report, name, key):
    return next((p[key] for p in report["phases"] if p["name"] == name), 0.0)


def release_files(project, case):
    spec = CASES[case]
    before = set(project.files())
    if "migration" in spec:
        project.add({"0002_backfill_label.py": spec["migration"]})
    else:
        project.models(spec["models"])
        project.run("makemigrations", "rhapp", "--safe", input=spec.get("answers"), safemigrate=spec.get("safemigrate"))
        project.models(BASE)
    return sorted(set(project.files()) - before)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--sample", default="1")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--save", metavar="DIR", help="write each case's two JSON reports to DIR")
    options = parser.parse_args()
    project = RehearseProject()
    results = []
    try:
        project.models(BASE)
        project.run("makemigrations", "rhapp")
        project.run("migrate", "--all-stages")
        started = time.monotonic()
        project.query("INSERT INTO rhapp_item (name, qty, amount, payload) SELECT 'name ' || i, i %% 1000, i, "
                    "md5(i::text) FROM generate_series(1, %s) i", [options.rows])
        project.query("VACUUM ANALYZE rhapp_item")
        print(f"source: {options.rows:,} rows in {time.monotonic() - started:.0f} s", flush=True)
        for case in options.cases.split(","):
            files = release_files(project, case)
            print(f"[{case}] release: {', '.join(files)}", flush=True)
            try:
                # Each rehearsal starts after a checkpoint: otherwise the checkpointer is still flushing
                # the 10M-row load (or the previous full copy) while the 0.1 s sample build runs.
                project.query("CHECKPOINT")
                sample = rehearse(project, case, "--sample", options.sample)
                project.query("CHECKPOINT")
                full = rehearse(project, case, "--from-template", project.dbname)
            finally:
                for name in files:
                    (project.migrations / f"{name}.py").unlink()
            if options.save:
                Path(options.save).mkdir(parents=True, exist_ok=True)
                for kind, report in (("sample", sample), ("full", full)):
                    (Path(options.save) / f"{case}-{kind}.json").write_text(json.dumps(report, indent=1))
            row = {"case": case}
            for name in ("expand", "background", "contract"):
                row[f"{name}_predicted"] = phase(sample, name, "predicted_seconds")
                row[f"{name}_sample_measured"] = phase(sample, name, "measured_seconds")
                row[f"{name}_full"] = phase(full, name, "measured_seconds")
            row["total_predicted"] = row["expand_predicted"] + row["background_predicted"] + row["contract_predicted"]
            row["total_full"] = row["expand_full"] + row["background_full"] + row["contract_full"]
            row["error_pct"] = 100.0 * (row["total_predicted"] - row["total_full"]) / row["total_full"]
            row["sample_rows"] = next(t["rehearsed_rows"] for t in sample["tables"] if t["table"] == "rhapp_item")
            row["basis"] = max(sample["steps"], key=lambda s: s["predicted"]["seconds"])["predicted"]["basis"]
            row["wall"] = (sample["wall"], full["wall"])
            results.append(row)
            print(f"[{case}] predicted {row['total_predicted']:.1f} s from {row['sample_rows']:,} rows, full run "
                  f"{row['total_full']:.1f} s: {row['error_pct']:+.0f} %  ({row['basis']})", flush=True)
    finally:
        project.drop()
    print()
    print(f"{options.rows:,} rows, --sample {options.sample}")
    print("| case | expand predicted / full | background copy predicted / full | contract predicted / full | "
          "total error | rehearse wall time (sample / full) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in results:
        print(f"| {row['case']} | {row['expand_predicted']:.1f} s / {row['expand_full']:.1f} s | "
              f"{row['background_predicted']:.1f} s / {row['background_full']:.1f} s | "
              f"{row['contract_predicted']:.2f} s / {row['contract_full']:.2f} s | {row['error_pct']:+.0f} % | "
              f"{row['wall'][0]:.0f} s / {row['wall'][1]:.0f} s |")
    worst = max((abs(row["error_pct"]) for row in results), default=0.0)
    print(f"max_abs_error_pct={worst:.0f}")


if __name__ == "__main__":
    main()
