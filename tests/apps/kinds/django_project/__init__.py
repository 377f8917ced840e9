"""A minimal, realistic Django project (no database): ``kinds.django_project.wsgi:application`` and
``kinds.django_project.asgi:application``."""
