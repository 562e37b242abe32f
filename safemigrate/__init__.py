"""Zero-downtime PostgreSQL schema changes for Django.

Operations live in ``safemigrate.operations``; this module only carries the
version so that importing it stays cheap (it is imported by every migration
file that uses an operation).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
