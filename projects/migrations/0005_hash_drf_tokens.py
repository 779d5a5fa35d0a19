# DRF's authtoken app (keys stored in the clear) is gone: every key it held becomes a hashed ApiToken of the
# same user, so existing clients keep working, and the clear keys are deleted. Its table is read with plain
# SQL because the app is no longer installed; a database that never had it has nothing to move.

import hashlib
from datetime import UTC

from django.db import migrations
from django.utils.dateparse import parse_datetime


def _aware(value):
    value = parse_datetime(value) if isinstance(value, str) else value
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def hash_drf_tokens(apps, schema_editor):
    connection = schema_editor.connection
    if "authtoken_token" not in connection.introspection.table_names():
        return
    ApiToken = apps.get_model("projects", "ApiToken")
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {connection.ops.quote_name('key')}, user_id, created FROM authtoken_token")
        rows = cursor.fetchall()
    for key, user_id, created in rows:
        digest = hashlib.sha256(key.encode()).hexdigest()
        token, _ = ApiToken.objects.get_or_create(
            digest=digest, defaults={"user_id": user_id, "name": "migrated", "prefix": key[:6]})
        if created is not None:  # auto_now_add set it to now; keep the key's own date
            ApiToken.objects.filter(pk=token.pk).update(created_at=_aware(created))
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM authtoken_token")


class Migration(migrations.Migration):

    dependencies = [
        ("projects", "0004_api_token"),
    ]

    operations = [
        migrations.RunPython(hash_drf_tokens, migrations.RunPython.noop),
    ]
