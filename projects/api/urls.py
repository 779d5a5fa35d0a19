from django.urls import path
from rest_framework.routers import SimpleRouter

from projects.api.views import ApplyView, EventViewSet, ProjectViewSet

router = SimpleRouter()
router.register(r"projects", ProjectViewSet, basename="project")
router.register(r"projects/(?P<project>[^/.]+)/events", EventViewSet, basename="event")
urlpatterns = [path("projects/<str:project>/apply/", ApplyView.as_view(), name="apply"), *router.urls]
