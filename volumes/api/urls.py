from rest_framework.routers import SimpleRouter

from volumes.api.views import VolumeViewSet

router = SimpleRouter()
router.register(r"projects/(?P<project>[^/.]+)/volumes", VolumeViewSet, basename="volume")
urlpatterns = router.urls
