"""WSGI entry point of the test Django project: ``kinds.django_project.wsgi:application``."""

from __future__ import annotations

import os

from .. import _common  # noqa: F401  # reads the version file first: "fail-import" fails here, at import

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kinds.django_project.settings")

from django.core.wsgi import get_wsgi_application  # type: ignore[import-untyped]  # noqa: E402

application = get_wsgi_application()

from . import urls  # noqa: E402, F401  # Django imports the URLconf lazily; import it now, as a deploy check would
