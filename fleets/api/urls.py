from rest_framework.routers import SimpleRouter

from fleets.api.views import FleetViewSet, InstanceViewSet

router = SimpleRouter()
router.register(r"projects/(?P<project>[^/.]+)/fleets", FleetViewSet, basename="fleet")
router.register(r"projects/(?P<project>[^/.]+)/instances", InstanceViewSet, basename="instance")
urlpatterns = router.urls
