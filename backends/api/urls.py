from rest_framework.routers import SimpleRouter

from backends.api.views import BackendViewSet

router = SimpleRouter()
router.register(r"projects/(?P<project>[^/.]+)/backends", BackendViewSet, basename="backend")
urlpatterns = router.urls
