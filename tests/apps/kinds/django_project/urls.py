"""URLs of the test Django project."""

from __future__ import annotations

from django.urls import path  # type: ignore[import-untyped]

from . import views

urlpatterns = [
    path("", views.index),
    path("slow", views.slow),
    path("stream", views.stream),
    path("sse", views.sse),
]
