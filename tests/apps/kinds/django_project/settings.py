"""Settings of the test Django project: production-like (DEBUG off, a real ALLOWED_HOSTS, the usual
middleware), no database."""

from __future__ import annotations

SECRET_KEY = "liveswap-tests-not-a-secret"
DEBUG = False
# As in production: only the names this service is reached by. A request with any other Host
# header (e.g. "liveswap-health") is answered 400 by CommonMiddleware (DisallowedHost).
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
ROOT_URLCONF = "kinds.django_project.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
# As `django-admin startproject` writes it. (Django sets the process's TZ to TIME_ZONE at setup: with
# the default, America/Chicago, the workers' log timestamps would be 5 or 6 hours off the supervisor's.)
TIME_ZONE = "UTC"
WSGI_APPLICATION = "kinds.django_project.wsgi.application"
ASGI_APPLICATION = "kinds.django_project.asgi.application"
