"""WSGI entry point of the test project: ``djangoproj.wsgi:application``."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangoproj.settings")

from django.core.wsgi import get_wsgi_application  # type: ignore[import-untyped]  # noqa: E402

application = get_wsgi_application()

from . import urls  # noqa: E402, F401  # Django imports the URLconf lazily; import it now, as a deploy check would
