"""The engine: PostgreSQL facts and SQL execution; imports nothing above it."""
