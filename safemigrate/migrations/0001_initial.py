"""The background migrations table (safemigrate.models.BackgroundMigration).

An app's expand migration may enqueue a background migration before this
migration runs (nothing orders the two), and then creates the table itself
(``safemigrate.pg.background_state.ensure_tables``, from the same model). So
the table is created here only when it does not exist yet; the state is
Django's CreateModel either way, and ``makemigrations --check`` stays clean.
"""

from django.db import migrations, models


class CreateModelUnlessExists(migrations.CreateModel):
    """CreateModel whose table may already exist (created on first use, with the same DDL)."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        model = to_state.apps.get_model(app_label, self.name)
        with schema_editor.connection.cursor() as cursor:
            existing = schema_editor.connection.introspection.table_names(cursor)
        if model._meta.db_table not in existing:
            super().database_forwards(app_label, schema_editor, from_state, to_state)


class Migration(migrations.Migration):

    initial = True

    dependencies = []

    operations = [
        CreateModelUnlessExists(
            name='BackgroundMigration',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('name', models.CharField(help_text="The copy's progress name.", max_length=400, unique=True)),
                ('app_label', models.CharField(blank=True, default='', max_length=100)),
                ('migration', models.CharField(blank=True, default='', help_text='The migration that enqueued it.', max_length=255)),
                ('description', models.TextField(blank=True, default='')),
                ('table_name', models.CharField(max_length=255)),
                ('columns', models.JSONField(default=list)),
                ('kind', models.CharField(max_length=10)),
                ('spec', models.JSONField(default=dict)),
                ('state', models.CharField(choices=[('queued', 'Queued'), ('running', 'Running'), ('paused', 'Paused'), ('on_hold', 'On Hold'), ('finished', 'Finished'), ('finalized', 'Finalized'), ('failed', 'Failed'), ('cancelled', 'Cancelled')], default='queued', max_length=10)),
                ('hold_until', models.DateTimeField(blank=True, null=True)),
                ('hold_reason', models.TextField(blank=True, default='')),
                ('throttle_reason', models.TextField(blank=True, default='')),
                ('health', models.JSONField(blank=True, default=dict)),
                ('error', models.TextField(blank=True, default='')),
                ('rows_done', models.BigIntegerField(default=0)),
                ('rows_total', models.BigIntegerField(default=0, help_text='Estimate (pg_class.reltuples) when enqueued.')),
                ('batches', models.IntegerField(default=0)),
                ('batch_size', models.IntegerField(default=0)),
                ('attempts', models.IntegerField(default=0)),
                ('retries', models.IntegerField(default=0)),
                ('rows_per_second', models.FloatField(default=0.0)),
                ('duty_cycle', models.FloatField(default=0.0, help_text='Share of the time spent in batches, not pausing.')),
                ('last_batch_ms', models.IntegerField(default=0)),
                ('last_batch_at', models.DateTimeField(blank=True, null=True)),
                ('last_lsn', models.CharField(blank=True, default='', max_length=40)),
                ('runner', models.CharField(blank=True, default='', max_length=200)),
                ('lease_until', models.DateTimeField(blank=True, null=True)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('started_at', models.DateTimeField(blank=True, null=True)),
                ('finished_at', models.DateTimeField(blank=True, null=True)),
                ('updated_at', models.DateTimeField(auto_now=True)),
            ],
            options={
                'db_table': 'safemigrate_background_migration',
                'ordering': ['id'],
                'permissions': [('control_backgroundmigration', 'Can pause, resume and retry background migrations')],
            },
        ),
    ]
