"""What the operations that install dual-write triggers share."""

from ..pg import triggers


class TriggerVersion:
    """The ``trigger_version`` argument: which trigger body (``pg.triggers.BODIES``) the operation installs.

    Written to the migration file only when it is not 1 (the constructor
    default never moves), so a later release with a new trigger body never
    changes what an older migration installs.
    """

    _trigger_version = 1

    @property
    def trigger_version(self):
        return self._trigger_version

    @trigger_version.setter
    def trigger_version(self, value):
        # Checked when the migration file is loaded, not half-way through ``migrate``.
        if value not in triggers.BODIES:
            known = ", ".join(str(v) for v in sorted(triggers.BODIES))
            raise ValueError(
                f"{type(self).__name__}: trigger_version={value!r} is not a trigger body this safemigrate "
                f"knows (it knows {known}). The migration file names the body it was written with, so that "
                f"an upgrade never changes what an old migration installs; a version it does not know comes "
                f"from a newer safemigrate (upgrade safemigrate to the release that wrote the file) or from "
                f"an edit by hand (put back the version makemigrations --safe wrote, or remove the argument "
                f"for version 1)."
            )
        self._trigger_version = value

    def with_trigger_version(self, kwargs):
        """Deconstructed ``kwargs``, with ``trigger_version`` when it is not 1."""
        if self.trigger_version != 1:
            kwargs["trigger_version"] = self.trigger_version
        return kwargs
