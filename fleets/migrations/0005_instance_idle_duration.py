from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("fleets", "0004_issue11_fields"),
    ]

    operations = [
        migrations.AddField(
            model_name="instance",
            name="idle_duration",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
    ]
