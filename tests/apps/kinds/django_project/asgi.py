"""ASGI entry point of the test Django project: ``kinds.django_project.asgi:application``.

Django's ASGI handler does not speak lifespan: uvicorn notes that and carries on.
"""

from __future__ import annotations

import os

from .. import _common  # noqa: F401  # reads the version file first: "fail-import" fails here, at import

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kinds.django_project.settings")

from django.core.asgi import get_asgi_application  # type: ignore[import-untyped]  # noqa: E402

application = get_asgi_application()

from . import urls  # noqa: E402, F401  # Django imports the URLconf lazily; import it now, as a deploy check would
