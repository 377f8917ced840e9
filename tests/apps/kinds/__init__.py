"""One test app per kind of app liveswap runs, all with the same endpoints and the same version file.

Every app reads ``$LIVESWAP_TEST_STATE`` when it is imported (each worker imports afresh): the first
word is the version, the optional second word a behaviour ("fail-import", "fail-startup" where the
kind has a lifespan, "unhealthy"). Endpoints, identical across kinds:

- ``GET /``: ``version=V``; 500 when "unhealthy". Headers ``x-app-version`` and ``x-worker-pid``.
- ``POST /``: reads the whole body, answers ``len=N sha256=HEX version=V``.
- ``GET /slow?s=1.5``: prints ``slow request started in pid N``, sleeps, answers ``slow V``.
- ``GET /stream?n=10&s=0.1``: n chunks ``chunk i V``, s seconds apart, no Content-Length; prints
  ``stream started in pid N`` once the first chunk has been handed to the server.
- ``GET /sse?n=10&s=0.1``: the same as ``text/event-stream`` events; prints ``sse started in pid N``.

Modules: ``kinds.raw_asgi:app``, ``kinds.fastapi_app:app``, ``kinds.wsgi_func:application``,
``kinds.flask_app:app``, ``kinds.django_project.wsgi:application``,
``kinds.django_project.asgi:application``.
"""
