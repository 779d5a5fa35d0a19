from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="PassHeartbeat",
            fields=[
                ("task_name", models.CharField(max_length=100, primary_key=True, serialize=False)),
                ("finished_at", models.DateTimeField()),
                ("worker", models.CharField(blank=True, default="", max_length=255)),
            ],
        ),
    ]
