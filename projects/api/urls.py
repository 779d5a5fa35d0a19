from rest_framework.routers import SimpleRouter

from projects.api.views import EventViewSet, ProjectViewSet

router = SimpleRouter()
router.register(r"projects", ProjectViewSet, basename="project")
router.register(r"projects/(?P<project>[^/.]+)/events", EventViewSet, basename="event")
urlpatterns = router.urls
