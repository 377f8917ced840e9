"""A Django project for tests/test_wsgi.py (DEBUG on, no database): ``djangoproj.wsgi:application``."""
