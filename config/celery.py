"""The Celery application: configuration comes from Django settings (CELERY_* names)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("stackyard")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Task durations and failures for /metrics (Celery signals; core.metrics holds the metric objects).
from core.metrics import watch_celery_tasks  # noqa: E402

watch_celery_tasks()
