"""A Flask project for tests/test_wsgi.py: ``flaskproj.app:app`` (the debug build mounted at ``/debug``)."""
