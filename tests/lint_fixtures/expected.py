"""Expected verdict for every operation in the fixture migrations.

Keyed by (app, migration, operation index): the set of rule ids that must be
reported as errors or warnings (empty: nothing may be), and why the case is
here. ``miss``: the linter before issue 14 said nothing; ``false positive``:
it reported an error for something harmless; ``baseline``: it was right and
must stay right. Notes (severity "note") are listed separately: they never
fail CI and do not count for precision and recall.
"""

MISS, FALSE_POSITIVE, BASELINE = "miss", "false positive", "baseline"

EXPECTED = {
    # 0001: new tables only.
    **{("billing", "0001_initial", i): (set(), BASELINE) for i in range(7)},
    ("billing", "0002_invoice_payer", 0): ({"SAFE103"}, BASELINE),
    ("billing", "0002_invoice_payer", 1): ({"SAFE109"}, MISS),  # FK retargeted: bigint -> uuid
    ("billing", "0003_number_not_unique", 0): ({"SAFE111"}, MISS),  # unique -> db_index
    ("billing", "0004_created_by", 0): ({"SAFE118"}, MISS),  # FK retargeted, same key type
    ("billing", "0004_created_by", 1): (set(), BASELINE),  # on_delete / related_name / help_text only
    ("billing", "0004_created_by", 2): ({"SAFE118"}, MISS),  # a default on a FK: Django re-adds the constraint
    ("billing", "0005_raw_sql", 0): ({"SAFE130"}, MISS),
    ("billing", "0005_raw_sql", 1): ({"SAFE131"}, MISS),
    ("billing", "0005_raw_sql", 2): ({"SAFE132"}, MISS),
    ("billing", "0005_raw_sql", 3): ({"SAFE133"}, MISS),
    ("billing", "0005_raw_sql", 4): ({"SAFE134"}, MISS),
    ("billing", "0005_raw_sql", 5): ({"SAFE135"}, MISS),
    ("billing", "0005_raw_sql", 6): ({"SAFE135"}, MISS),
    ("billing", "0005_raw_sql", 7): ({"SAFE136"}, MISS),
    ("billing", "0005_raw_sql", 8): ({"SAFE137"}, MISS),
    ("billing", "0005_raw_sql", 9): ({"SAFE138"}, MISS),
    ("billing", "0005_raw_sql", 10): ({"SAFE138"}, MISS),
    ("billing", "0005_raw_sql", 11): ({"SAFE139"}, MISS),
    ("billing", "0005_raw_sql", 12): (set(), BASELINE),  # CONCURRENTLY
    ("billing", "0005_raw_sql", 13): (set(), BASELINE),  # NOT VALID + VALIDATE
    ("billing", "0005_raw_sql", 14): (set(), BASELINE),  # UPDATE with WHERE
    ("billing", "0005_raw_sql", 15): (set(), BASELINE),  # INSERT
    ("billing", "0005_raw_sql", 16): (set(), BASELINE),  # DDL on a table created in the same SQL
    ("billing", "0005_raw_sql", 17): (set(), BASELINE),  # ; and DROP TABLE inside a $body$ string
    ("billing", "0005_raw_sql", 18): (set(), BASELINE),  # DDL in a comment
    ("billing", "0005_raw_sql", 19): (set(), BASELINE),  # constant DEFAULT: no rewrite since PostgreSQL 11
    ("billing", "0006_harmless", 0): (set(), FALSE_POSITIVE),  # one-row RunPython: a note at most
    ("billing", "0006_harmless", 1): (set(), FALSE_POSITIVE),  # M2M: only a join table
    ("billing", "0006_harmless", 2): (set(), FALSE_POSITIVE),  # unmanaged model
    ("billing", "0006_harmless", 3): (set(), FALSE_POSITIVE),  # unmanaged model
    ("billing", "0006_harmless", 4): (set(), FALSE_POSITIVE),  # help_text
    ("billing", "0006_harmless", 5): (set(), FALSE_POSITIVE),  # choices, verbose_name
    ("billing", "0006_harmless", 6): (set(), FALSE_POSITIVE),  # Python default, validators
    ("billing", "0006_harmless", 7): (set(), BASELINE),  # varchar widening: in place
    ("billing", "0006_harmless", 8): ({"SAFE113"}, FALSE_POSITIVE),  # a brief-lock warning, not a rewrite error
    ("billing", "0006_harmless", 9): ({"SAFE131"}, MISS),  # blocking CREATE INDEX as the database half
    ("billing", "0006_harmless", 10): (set(), BASELINE),  # state only: no SQL
    ("billing", "0007_cleanup", 0): ({"SAFE101"}, BASELINE),
    ("billing", "0007_cleanup", 1): ({"SAFE106"}, BASELINE),
    ("billing", "0007_cleanup", 2): ({"SAFE108"}, BASELINE),
    ("billing", "0007_cleanup", 3): ({"SAFE107"}, BASELINE),
    ("billing", "0007_cleanup", 4): ({"SAFE110"}, BASELINE),
    ("billing", "0007_cleanup", 5): ({"SAFE109"}, BASELINE),
    ("billing", "0007_cleanup", 6): ({"SAFE115"}, BASELINE),
    ("billing", "0007_cleanup", 7): ({"SAFE114"}, BASELINE),
    ("billing", "0007_cleanup", 8): ({"SAFE116"}, BASELINE),
    ("billing", "0007_cleanup", 9): ({"SAFE104"}, BASELINE),
    ("billing", "0007_cleanup", 10): ({"SAFE102"}, BASELINE),
    ("billing", "0007_cleanup", 11): ({"SAFE104"}, MISS),  # Meta.db_table changed: the table is renamed
    ("billing", "0007_cleanup", 12): (set(), BASELINE),
    ("billing", "0007_cleanup", 13): ({"SAFE105"}, BASELINE),  # callable default
    ("billing", "0007_cleanup", 14): ({"SAFE114"}, MISS),  # exclusion constraint: an index build
    ("ledger", "0001_initial", 0): (set(), BASELINE),
    ("ledger", "0002_entry_customer", 0): (set(), FALSE_POSITIVE),  # cross-app FK, Python-only edits
    ("ledger", "0002_entry_customer", 1): ({"SAFE103", "SAFE109"}, MISS),  # FK -> integer: rename + type
}

#: Rule ids of the expected notes (never errors): a data migration to look at.
EXPECTED_NOTES = {("billing", "0006_harmless", 0): {"SAFE117"}}

#: Severity every expected rule id must be reported with.
WARNINGS = {"SAFE113", "SAFE139"}
