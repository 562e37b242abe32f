"""The differential oracle: plain Django's end state is the reference for safemigrate's.

See docs/pages/oracle.md. ``python -m tests.oracle --examples 500`` runs the
deep profile; tests/test_oracle.py runs the self-tests, the hand-written
defect histories and a fast Hypothesis profile.
"""
