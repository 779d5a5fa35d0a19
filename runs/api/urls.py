from rest_framework.routers import SimpleRouter

from runs.api.views import RunViewSet

router = SimpleRouter()
router.register(r"projects/(?P<project>[^/.]+)/runs", RunViewSet, basename="run")
urlpatterns = router.urls
