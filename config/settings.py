"""Stackyard settings, driven by environment variables (SPEC section 1).

With no variables set this is the embedded default: SQLite and a filesystem Celery broker in
STACKYARD_DATA_DIR. Production sets DATABASE_URL (PostgreSQL) and CELERY_BROKER_URL (Redis).
"""

import os
import secrets
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("STACKYARD_DATA_DIR", BASE_DIR / ".stackyard")).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

EMBEDDED = "DATABASE_URL" not in os.environ


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in {"1", "true", "yes", "on"}


def _persistent_secret_key() -> str:
    # Credentials are encrypted with a key derived from SECRET_KEY, so it must survive restarts.
    path = DATA_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or _persistent_secret_key()
DEBUG = _env_bool("DJANGO_DEBUG", EMBEDDED)
ALLOWED_HOSTS = [
    h.strip()
    for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver").split(",")
    if h.strip()
]

# --- HTTPS ----------------------------------------------------------------------------------
# STACKYARD_HTTPS=1: the site is served over HTTPS, directly or behind a proxy that terminates TLS and sets
# X-Forwarded-Proto (and strips a client's own). Then plain HTTP is redirected, cookies are Secure and HSTS is
# sent, as cookiecutter-django's production settings do, and `manage.py check --deploy` passes. Off by default:
# the embedded default serves plain HTTP on a laptop. Raise DJANGO_SECURE_HSTS_SECONDS to a year (31536000)
# once every subdomain is served over HTTPS.
HTTPS = _env_bool("STACKYARD_HTTPS", False)
if HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = _env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_SECURE_HSTS_SECONDS", "3600"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = _env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = _env_bool("DJANGO_SECURE_HSTS_PRELOAD", True)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "core",
    "projects",
    "backends",
    "fleets",
    "volumes",
    "runs",
    "configurations",
    "ops",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves STATIC_ROOT (runstack collects into it) from any WSGI server; in DEBUG it also finds
    # files in the apps and notices new ones, so runserver needs no collectstatic.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{DATA_DIR / 'stackyard.sqlite3'}"),
        conn_max_age=0,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # SQLite ignores SELECT ... FOR UPDATE; IMMEDIATE transactions take the write lock up front,
    # so read-check-write sequences in services cannot interleave.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # Tests use a file too: an in-memory shared-cache database takes table locks that fail at
    # once under threads (a Celery worker thread) instead of waiting like a real SQLite file.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = []
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"  # collectstatic fills it; runstack runs collectstatic at every start
STATIC_ROOT.mkdir(exist_ok=True)  # WhiteNoise warns about a missing one in every process
# runstack gives its children PROMETHEUS_MULTIPROC_DIR (this folder, emptied at each start) so /metrics adds up
# the samples of web, worker and beat processes; without that variable metrics stay in each process (core.metrics).
METRICS_DIR = DATA_DIR / "metrics"

# --- API ------------------------------------------------------------------------------------
# A body over this size is answered 413 (code too_large). A configuration file is a few kilobytes; the
# bound also bounds the time a hostile YAML body can take to parse (about a second).
DATA_UPLOAD_MAX_MEMORY_SIZE = 256 * 1024
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Hashed, named, expiring, revocable tokens (projects.tokens); "Token <key>" or "Bearer <key>".
        "projects.api.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "core.api.pagination.StandardPagination",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "core.api.errors.exception_handler",
    "DEFAULT_PARSER_CLASSES": [
        "core.api.parsers.BoundedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Stackyard API",
    "DESCRIPTION": "Control plane for GPU workloads: backends, fleets, volumes and runs.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Every operation documents its error responses, in the one error shape (core/api/schema.py).
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "core.api.schema.document_error_responses",
    ],
    # The docs pages load Swagger UI and Redoc from our own static files: they work offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Celery ---------------------------------------------------------------------------------
# "localhost" only silences kombu's "no hostname" warning: the filesystem transport ignores it.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://localhost//")
if CELERY_BROKER_URL.startswith("filesystem"):
    BROKER_DIR = DATA_DIR / "broker"
    (BROKER_DIR / "queue").mkdir(parents=True, exist_ok=True)
    (BROKER_DIR / "processed").mkdir(parents=True, exist_ok=True)
    (BROKER_DIR / "control").mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "store_processed": False,
        # Broadcast (worker control) messages; kombu's default is a folder in the working directory.
        "control_folder": str(BROKER_DIR / "control"),
    }
CELERY_BROKER_CONNECTION_TIMEOUT = 5
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_TASK_TIME_LIMIT = 300
CELERY_TASK_SOFT_TIME_LIMIT = 240
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"

RECONCILE_INTERVAL = float(os.environ.get("STACKYARD_RECONCILE_INTERVAL", "2"))
# Periodic, level-triggered reconcilers. Each entry expires within its interval so a backlog of
# ticks never piles up behind a slow pass.
def _every(seconds: float, task: str) -> dict:
    return {"task": task, "schedule": seconds, "options": {"expires": seconds}}


VERIFY_BLOCKS_INTERVAL = float(os.environ.get("STACKYARD_VERIFY_BLOCKS_INTERVAL", "60"))
# The fast reconcilers: on beat every RECONCILE_INTERVAL seconds, and watched by /healthz.
FAST_RECONCILERS = (
    "runs.place_jobs",
    "runs.process_jobs",
    "runs.retry_failed_replicas",
    "runs.roll_out",
    "runs.trigger_scheduled_runs",
    "fleets.process_fleets",
    "fleets.process_instances",
    "fleets.terminate_instances",
    "volumes.process_volumes",
    "volumes.attach_volumes",
    "volumes.detach_volumes",
    "volumes.enforce_stop_durations",
)
CELERY_BEAT_SCHEDULE = {name: _every(RECONCILE_INTERVAL, name) for name in FAST_RECONCILERS}
CELERY_BEAT_SCHEDULE["fleets.verify_block_counts"] = _every(VERIFY_BLOCKS_INTERVAL, "fleets.verify_block_counts")
ORPHAN_SCAN_INTERVAL = float(os.environ.get("STACKYARD_ORPHAN_SCAN_INTERVAL", "60"))
CELERY_BEAT_SCHEDULE["backends.find_orphans"] = _every(ORPHAN_SCAN_INTERVAL, "backends.find_orphans")
# /healthz answers 503 when a fast reconciler has not finished a pass for this long (ops/health.py).
STALL_SECONDS = float(os.environ.get("STACKYARD_STALL_SECONDS") or max(60.0, 30 * RECONCILE_INTERVAL))

# Whether bootstrap gives project main a ``local`` backend (this machine runs its members' commands).
LOCAL_BACKEND = os.environ.get("STACKYARD_LOCAL_BACKEND", "1").strip().lower() not in ("0", "false", "no", "off")
# How often a running job's workload (and its readiness probes) is polled, in seconds.
JOB_POLL_INTERVAL = float(os.environ.get("STACKYARD_JOB_POLL_INTERVAL", "5"))
# An attach that has not completed after this many seconds fails its job (volume_error).
ATTACH_TIMEOUT = float(os.environ.get("STACKYARD_ATTACH_TIMEOUT", "600"))

ADMIN_TOKEN = os.environ.get("STACKYARD_ADMIN_TOKEN") or None
# The server config file (projects and their backends), applied by runstack and manage.py applyconfig.
SERVER_CONFIG = os.environ.get("STACKYARD_CONFIG")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("STACKYARD_LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
