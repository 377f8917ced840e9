"""Views that WSGI servers get wrong: a 20 MB upload (checked by hash), a ``FileResponse`` download
(served through ``wsgi.file_wrapper``), a ``StreamingHttpResponse``, a redirect and an exception."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

from django.http import (  # type: ignore[import-untyped]
    FileResponse,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    StreamingHttpResponse,
)
from django.shortcuts import redirect  # type: ignore[import-untyped]
from wsgi_pep3333 import MIB, file_of  # type: ignore[import-not-found]  # tests/apps is the app dir


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"django pid={os.getpid()}\n", content_type="text/plain")


def upload(request: HttpRequest) -> HttpResponse:
    """A multipart upload (``file``): its length and sha256, read from Django's UploadedFile."""
    if request.method != "POST":
        return HttpResponse("POST a file\n", status=405, content_type="text/plain")
    stored = request.FILES["file"]
    h, total = hashlib.sha256(), 0
    for chunk in stored.chunks(MIB):
        h.update(chunk)
        total += len(chunk)
    where = "disk" if hasattr(stored, "temporary_file_path") else "memory"
    return HttpResponse(
        f"len={total} sha256={h.hexdigest()} name={stored.name} stored={where}\n", content_type="text/plain"
    )


def download(request: HttpRequest) -> FileResponse:
    size = int(request.GET.get("size", "1000"))
    return FileResponse(open(file_of(size), "rb"), as_attachment=True, filename="data.bin")  # noqa: SIM115


def stream(request: HttpRequest) -> StreamingHttpResponse:
    n = int(request.GET.get("n", "5"))

    def items() -> Iterator[bytes]:
        for i in range(n):
            yield f"item {i} of {n}\n".encode()

    return StreamingHttpResponse(items(), content_type="text/plain")


def go_elsewhere(request: HttpRequest) -> HttpResponseRedirect:
    return redirect("target")


def target(request: HttpRequest) -> HttpResponse:
    script_name = request.META.get("SCRIPT_NAME", "")
    return HttpResponse(f"target script_name={script_name!r} path={request.path}\n", content_type="text/plain")


def boom(request: HttpRequest) -> HttpResponse:
    raise ZeroDivisionError("djangoproj boom on purpose")
