"""Moved to ``safemigrate.management.migrate``; this old import path is the very same module (an alias, so
monkeypatching either name patches what the code uses)."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("safemigrate.management.migrate")
