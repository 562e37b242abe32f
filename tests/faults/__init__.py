"""The kill -9 fault profile (see ``harness``); run it with ``python -m tests.faults``."""
