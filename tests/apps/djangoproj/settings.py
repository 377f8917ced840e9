"""Settings of the WSGI test project: DEBUG on (so an exception shows Django's technical 500 page),
no database, the usual middleware less CSRF (the tests post without a token)."""

from __future__ import annotations

SECRET_KEY = "liveswap-wsgi-tests-not-a-secret"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
ROOT_URLCONF = "djangoproj.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
TIME_ZONE = "UTC"
# Uploads above 2.5 MB go to a temporary file, as in any deployment (Django's default).
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
WSGI_APPLICATION = "djangoproj.wsgi.application"
