"""The throw-away app of the differential oracle (tests/oracle).

It has no models and no migrations of its own: the oracle builds each model
version as migration states and points MIGRATION_MODULES at a temporary
package. The loader and the autodetector only consider installed apps, so
the label must exist here.
"""
