from rest_framework.routers import SimpleRouter

from projects.api.tokens import ApiTokenViewSet
from projects.api.views import EventViewSet, ProjectViewSet

router = SimpleRouter()
router.register(r"projects", ProjectViewSet, basename="project")
router.register(r"projects/(?P<project>[^/.]+)/events", EventViewSet, basename="event")
router.register(r"users/me/tokens", ApiTokenViewSet, basename="api-token")
urlpatterns = router.urls
