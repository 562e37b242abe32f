"""One code version's ORM traffic, in its own process.

Started by ``testproject.scenario`` with the settings and models of one code
version (old or new) on ``PYTHONPATH``. Threads create, update and read rows
of the scenario model through the ORM, time every call and record every
error, until the stop file appears; then the results (and what was written,
so the runner can check nothing was lost) go to a JSON file.

Usage: python -m testproject.traffic_worker SPEC.json RESULT.json STOP_FILE
"""

import json
import os
import sys
import threading
import time
import traceback
import uuid  # noqa: F401  (available to spec expressions)


def main(spec_path, result_path, stop_path):
    import django

    django.setup()
    from django.apps import apps
    from django.db import connection, connections

    with open(spec_path) as handle:
        spec = json.load(handle)
    model = apps.get_model(spec["app_label"], spec["model"])
    threads = spec.get("threads", 2)
    lock = threading.Lock()
    result = {"version": spec["version"], "calls": 0, "errors": [], "latencies": [], "created": [], "updated": {}}
    namespace = {"uuid": uuid}

    def values(template, i):
        return {field: eval(expr, dict(namespace, i=i)) for field, expr in template.items()}  # noqa: S307

    def work(thread):
        iteration = 0
        low, high = spec["update_range"]
        span = high - low + 1
        while not os.path.exists(stop_path):
            i = spec["id_base"] + thread * 1_000_000 + iteration
            kind = iteration % 3
            started = time.monotonic()
            record = None
            try:
                if kind == 0:
                    fields = values(spec["create"], i)
                    obj = model.objects.create(**fields)
                    record = ("created", obj.pk, fields)
                elif kind == 1:
                    pk = low + (thread * 1000 + iteration) % span
                    fields = values(spec["update"], i)
                    model.objects.filter(pk=pk).update(**fields)
                    record = ("updated", pk, fields)
                else:
                    obj = model.objects.filter(pk=low + iteration % span).first()
                    for field in spec.get("read", []):
                        getattr(obj, field)
                error = None
            except Exception as exc:  # recorded: the runner asserts there are none
                error = f"{type(exc).__name__}: {exc}".strip()[:500] + "\n" + traceback.format_exc(limit=2)[-400:]
                connection.close()
            elapsed = time.monotonic() - started
            with lock:
                result["calls"] += 1
                result["latencies"].append(round(elapsed, 5))
                if error:
                    result["errors"].append(error)
                elif record and record[0] == "created":
                    result["created"].append([record[1], record[2]])
                elif record:
                    result["updated"][str(record[1])] = record[2]
            iteration += 1
            time.sleep(spec.get("pause", 0.002))
        connections.close_all()

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    with open(result_path + ".started", "w"):
        pass
    for worker in workers:
        worker.join()
    with open(result_path, "w") as handle:
        json.dump(result, handle, default=str)


if __name__ == "__main__":
    main(*sys.argv[1:4])
