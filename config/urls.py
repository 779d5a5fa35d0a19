from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from core.api.errors import api_not_found
from ops.dashboard import admin_index
from ops.views import healthz, metrics

api_v1 = [
    path("", include("projects.api.urls")),
    path("", include("backends.api.urls")),
    path("", include("fleets.api.urls")),
    path("", include("volumes.api.urls")),
    path("", include("runs.api.urls")),
    path("", include("configurations.api.urls")),
    # Last: any other path ending in / (Django's APPEND_SLASH still redirects the others here).
    re_path(r"^(?:.*/)?$", api_not_found),
]

urlpatterns = [
    path("admin/", admin_index, name="admin_dashboard"),  # the admin index with the dashboard (ops.dashboard)
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics, name="metrics"),
]
