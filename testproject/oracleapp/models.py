# Intentionally empty: the oracle's models exist only as migration states.
