from django.urls import path

from configurations.api.views import ApplyView

urlpatterns = [path("projects/<str:project>/apply/", ApplyView.as_view(), name="apply")]
