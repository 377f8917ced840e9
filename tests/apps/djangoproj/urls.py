"""URLs of the WSGI test project."""

from __future__ import annotations

from django.urls import path  # type: ignore[import-untyped]

from . import views

urlpatterns = [
    path("", views.index),
    path("upload", views.upload),
    path("download", views.download),
    path("stream", views.stream),
    path("redirect", views.go_elsewhere),
    path("target", views.target, name="target"),
    path("boom", views.boom),
]
