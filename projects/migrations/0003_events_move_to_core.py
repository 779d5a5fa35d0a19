# Event and QueuedKick now belong to the framework (core.0001 takes over their tables).

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("projects", "0002_queued_kick"),
        ("core", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="Event"), migrations.DeleteModel(name="QueuedKick")],
            database_operations=[],
        ),
    ]
