# The event log and queued kicks moved from the projects app to the framework (core). The tables
# keep their names, so this only moves the models in Django's state; no data is touched.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ("projects", "0002_queued_kick"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="Event",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False,
                                                   verbose_name="ID")),
                        ("resource_type", models.CharField(max_length=32)),
                        ("resource_name", models.CharField(max_length=128)),
                        ("kind", models.CharField(max_length=64)),
                        ("message", models.TextField(blank=True, default="")),
                        ("actor", models.CharField(blank=True, default="", max_length=150)),
                        ("created_at", models.DateTimeField(auto_now_add=True, db_index=True)),
                        ("project", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE,
                                                      related_name="events", to="projects.project")),
                    ],
                    options={
                        "ordering": ["-created_at", "-id"],
                        "db_table": "projects_event",
                        "indexes": [models.Index(fields=["project", "resource_type", "resource_name"],
                                                 name="event_resource_idx")],
                    },
                ),
                migrations.CreateModel(
                    name="QueuedKick",
                    fields=[
                        ("task_name", models.CharField(max_length=100, primary_key=True, serialize=False)),
                        ("queued_at", models.DateTimeField()),
                    ],
                    options={"db_table": "projects_queuedkick"},
                ),
            ],
            database_operations=[],
        ),
    ]
