"""The admin page of background migrations: watch them, and pause, resume or retry them.

Read-only rows: the runner and the commands own them. The actions go through
the same state machine as ``manage.py backfills`` (``pg.background_state``),
so they are refused the same way (pausing a finished migration, say) and send
the same signals; they need the permission
``safemigrate.control_backgroundmigration``. Loaded by Django's admin
autodiscovery (an entry point, like ``apps.py``), only when
``django.contrib.admin`` is installed.
"""

from django.contrib import admin, messages
from django.db import connections
from django.utils import timezone

from .exceptions import BackgroundMigrationError
from .models import BackgroundMigration
from .pg import background_state as bg


def _action(verb, change, past):
    def act(modeladmin, request, queryset):
        done, refused = [], []
        for row in queryset:
            try:
                change(connections[queryset.db], row.name, reason=f"{verb} by {request.user} in the admin")
                done.append(row.name)
            except BackgroundMigrationError as exc:
                refused.append(str(exc))
        if done:
            modeladmin.message_user(request, f"{past}: {', '.join(done)}.", messages.SUCCESS)
        for message in refused:
            modeladmin.message_user(request, message, messages.WARNING)

    act.__name__ = verb
    return admin.action(description=f"{verb.capitalize()} selected background migrations",
                        permissions=["control"])(act)


@admin.register(BackgroundMigration)
class BackgroundMigrationAdmin(admin.ModelAdmin):
    list_display = ["name", "state", "progress", "rows", "rate", "duty", "eta", "throttle"]
    list_filter = ["state"]
    search_fields = ["name", "table_name"]
    actions = [_action("pause", bg.pause, "Paused"), _action("resume", bg.resume, "Resumed"),
               _action("retry", bg.retry, "Queued again")]
    readonly_fields = [field.name for field in BackgroundMigration._meta.fields]

    @admin.display(description="progress")
    def progress(self, row):
        return f"{row.progress_percent:.1f}%"

    @admin.display(description="rows done")
    def rows(self, row):
        return f"{row.rows_done:,} of ~{max(row.rows_total, row.rows_done):,}"

    @admin.display(description="rows/s")
    def rate(self, row):
        return f"{row.rows_per_second:,.0f}"

    @admin.display(description="duty cycle")
    def duty(self, row):
        return f"{row.duty_cycle:.0%}"

    @admin.display(description="ETA")
    def eta(self, row):
        return row.eta_text

    @admin.display(description="last throttle reason / error")
    def throttle(self, row):
        if row.state == bg.ON_HOLD and row.hold_until:
            return f"{row.hold_reason} (on hold until {timezone.localtime(row.hold_until):%H:%M:%S})"
        if row.state == bg.FAILED and row.error:
            return row.error.splitlines()[0]
        return row.throttle_reason or "-"

    def has_control_permission(self, request):
        return request.user.has_perm(f"{self.opts.app_label}.control_backgroundmigration")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
