"""Real applications behind the listeners: a Django project and a Flask app.

The Django project is written into a temp dir by this module (SQLite in that dir, the
admin, a view reading ``request.body``, an upload view, a form with CSRF); the Flask
app is in tests/listeners/framework_apps.py. Both are wrapped in
``wsgiref.validate.validator`` and served under the prefix ``/app`` (the listener's
``script_name``) three ways: FastCGI and SCGI behind real nginx (stock
``fastcgi_params`` / ``scgi_params``, the helpers of test_integration.py), and the
HTTP listener on its own. Requests are made as a browser makes them: cookies kept,
CSRF tokens read from the page, redirects looked at.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from email.message import Message
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from tests.listeners.framework_apps import DJANGO_DIR
from tests.listeners.nginx import free_port
from tests.listeners.test_integration import Nginx, Served, _need

pytestmark = pytest.mark.integration

pytest.importorskip("django", reason="pip install '.[test]' (Django is a test dependency)")
pytest.importorskip("flask", reason="pip install '.[test]' (Flask is a test dependency)")

TIMEOUT = 30.0
PREFIX = "/app"
VIAS = ["fastcgi+nginx", "scgi+nginx", "http"]
ADMIN_USER, ADMIN_PASSWORD = "admin", "correct horse battery"
#: a body and a file that are not easy to get right by accident
BODY_2MB = random.Random(2).randbytes(2_000_000)
FILE_5MB = random.Random(5).randbytes(5 * 1024 * 1024)

SETTINGS = """\
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent
SECRET_KEY = "test-only-key-" + "k" * 40
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
    "django.contrib.sessions", "django.contrib.messages", "django.contrib.staticfiles",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "site_urls"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [], "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3",
                         "NAME": BASE_DIR / "db.sqlite3"}}
STATIC_URL = "static/"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGGING = {
    "version": 1, "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["console"], "level": "ERROR"}},
}
"""

URLS = """\
from django.contrib import admin
from django.urls import path

import site_views as views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("body/", views.body),
    path("upload/", views.upload),
    path("form/", views.form, name="form"),
    path("thanks/", views.thanks, name="thanks"),
    path("uni/<str:word>/", views.uni),
]
"""

VIEWS = """\
import hashlib

from django.http import HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.template import engines
from django.views.decorators.csrf import csrf_exempt

FORM = engines["django"].from_string(
    '<form method="post">{% csrf_token %}<input name="name"></form>')


@csrf_exempt
def body(request):
    data = request.body
    return JsonResponse({"size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                         "content_type": request.content_type})


@csrf_exempt
def upload(request):
    stored = request.FILES["file"]
    digest = hashlib.sha256()
    size = 0
    for chunk in stored.chunks():
        digest.update(chunk)
        size += len(chunk)
    return JsonResponse({"name": stored.name, "size": size, "sha256": digest.hexdigest(),
                         "note": request.POST["note"]})


def form(request):
    if request.method == "POST":
        request.session["name"] = request.POST["name"]
        return redirect("thanks")
    return HttpResponse(FORM.render({}, request))


def thanks(request):
    return HttpResponse("thanks " + request.session.get("name", "nobody"))


def uni(request, word):
    return JsonResponse({"word": word, "q": request.GET.get("q"), "path": request.path,
                         "path_info": request.path_info})
"""

SETUP = f"""\
from django.core.management import call_command
import django

django.setup()
call_command("migrate", verbosity=0, interactive=False)
from django.contrib.auth.models import User

User.objects.create_superuser({ADMIN_USER!r}, "admin@example.invalid", {ADMIN_PASSWORD!r})
"""


class Browser:
    """http.client with a cookie jar, as a browser talks to a site (no redirects followed)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, Message, bytes]:
        sent = dict(headers or {})
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        for value in response.headers.get_all("Set-Cookie") or []:
            jar: SimpleCookie = SimpleCookie()
            jar.load(value)
            for name, morsel in jar.items():
                self.cookies[name] = morsel.value
        return response.status, response.headers, data

    def form(self, path: str, fields: dict[str, str]) -> tuple[int, Message, bytes]:
        return self.request("POST", path, urlencode(fields).encode(),
                            {"Content-Type": "application/x-www-form-urlencoded"})


def multipart(fields: dict[str, str], name: str, filename: str, content: bytes
              ) -> tuple[bytes, str]:
    """A multipart/form-data body as browsers send it (a raw UTF-8 filename)."""
    boundary = "----daemonappBoundary7MA4YWxkTrZu0gW"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'
             f"{value}\r\n".encode() for key, value in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                 f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                 .encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def django_dir() -> Iterator[Path]:
    """The Django project, migrated, with a superuser."""
    path = Path(tempfile.mkdtemp(prefix="dfw-django-", dir="/tmp"))
    try:
        (path / "site_settings.py").write_text(SETTINGS)
        (path / "site_urls.py").write_text(URLS)
        (path / "site_views.py").write_text(VIEWS)
        env = dict(os.environ, PYTHONPATH=str(path), DJANGO_SETTINGS_MODULE="site_settings")
        done = subprocess.run([sys.executable, "-c", SETUP], env=env, capture_output=True,
                              text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Site:
    """One framework app served one way: the port a browser talks to."""

    def __init__(self, port: int, served: Served, nginx: Nginx | None) -> None:
        self.port = port
        self.served = served
        self.nginx = nginx
        assert served.proc.stderr is not None
        self._stderr = served.proc.stderr.fileno()
        os.set_blocking(self._stderr, False)

    def browser(self) -> Browser:
        return Browser(self.port)

    def complaints(self) -> str:
        """What the app process wrote to stderr since the last call, if it looks like a
        failure (a validator assertion, a traceback Django or the listener logged)."""
        chunks = []
        while True:
            try:
                chunk = os.read(self._stderr, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        text = b"".join(chunks).decode("utf-8", "replace")
        return text if re.search(r"Traceback|validate|Error", text) else ""


@pytest.fixture(scope="module")
def sites(django_dir: Path) -> Iterator[Any]:
    """``site(framework, via)``: started on first use, stopped (drained) at the end."""
    base = Path(tempfile.mkdtemp(prefix="dfw-", dir="/tmp"))
    started: dict[tuple[str, str], Site] = {}

    def site(framework: str, via: str) -> Site:
        key = (framework, via)
        if key in started:
            return started[key]
        work = base / f"{framework}-{via.partition('+')[0]}"
        work.mkdir()
        options: dict[str, Any] = {"wsgi": f"tests.listeners.framework_apps:{framework}_app",
                                   "script_name": PREFIX}
        if via == "http":
            port = free_port()
            options.update(protocol="http", endpoint=f"tcp:{port}:interface=127.0.0.1")
        else:
            _need("nginx", "nginx")
            sock = work / "app.sock"
            options.update(protocol=via.partition("+")[0], endpoint=f"unix:{sock}")
        saved = os.environ.get(DJANGO_DIR)
        os.environ[DJANGO_DIR] = str(django_dir)
        try:
            served = Served(options, work)
        finally:
            if saved is None:
                del os.environ[DJANGO_DIR]
            else:
                os.environ[DJANGO_DIR] = saved
        nginx = None
        if via != "http":
            try:
                nginx = Nginx(work, sock)
            except BaseException:
                served.kill()
                raise
            port = nginx.port if via.startswith("fastcgi") else nginx.scgi_port
        started[key] = Site(port, served, nginx)
        return started[key]

    try:
        yield site
    finally:
        for item in started.values():
            if item.nginx is not None:
                item.nginx.stop()
            try:
                item.served.stop()  # a drain that ends, exit status 0
            finally:
                item.served.kill()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def site_checked(sites: Any) -> Iterator[Any]:
    """``sites``, and after the test: the apps it used wrote no failure to stderr."""
    used: list[Site] = []

    def site(framework: str, via: str) -> Site:
        found: Site = sites(framework, via)
        found.complaints()  # what earlier tests left is theirs
        used.append(found)
        return found

    yield site
    for found in used:
        assert found.complaints() == ""


def _csrf_token(page: bytes) -> str:
    found = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert found is not None, page[:500]
    return found.group(1).decode()


# ------------------------------------------------------------------ Django


@pytest.mark.parametrize("via", VIAS)
def test_django_admin_login(site_checked: Any, via: str) -> None:
    """The Django admin: redirect to the login page under the prefix, a POST without
    the CSRF token refused, a login with the token, then the admin with the session."""
    browser = site_checked("django", via).browser()
    status, headers, _ = browser.request("GET", f"{PREFIX}/admin/")
    assert (status, headers["Location"]) == (302, f"{PREFIX}/admin/login/?next={PREFIX}/admin/")
    login = f"{PREFIX}/admin/login/?next={PREFIX}/admin/"
    status, _, page = browser.request("GET", login)
    assert status == 200
    assert "csrftoken" in browser.cookies
    token = _csrf_token(page)
    fields = {"username": ADMIN_USER, "password": ADMIN_PASSWORD, "next": f"{PREFIX}/admin/"}
    assert browser.form(login, fields)[0] == 403
    status, headers, _ = browser.form(login, {**fields, "csrfmiddlewaretoken": token})
    assert (status, headers["Location"]) == (302, f"{PREFIX}/admin/")
    assert "sessionid" in browser.cookies
    status, _, page = browser.request("GET", f"{PREFIX}/admin/auth/user/")
    assert status == 200
    assert b"Select user to change" in page
    assert f'href="{PREFIX}/admin/auth/user/1/change/"'.encode() in page


@pytest.mark.parametrize("via", VIAS)
def test_django_request_body_2mb(site_checked: Any, via: str) -> None:
    """``request.body`` (Django reads exactly CONTENT_LENGTH bytes) of a 2 MB POST."""
    status, _, data = site_checked("django", via).browser().request(
        "POST", f"{PREFIX}/body/", BODY_2MB, {"Content-Type": "application/octet-stream"})
    assert status == 200, data[:2000]
    assert json.loads(data) == {"size": 2_000_000,
                                "sha256": hashlib.sha256(BODY_2MB).hexdigest(),
                                "content_type": "application/octet-stream"}


@pytest.mark.parametrize("via", VIAS)
def test_django_multipart_upload_5mb(site_checked: Any, via: str) -> None:
    """A 5 MiB file in a multipart form with a UTF-8 filename reaches request.FILES whole."""
    body, content_type = multipart({"note": "zoë"}, "file", "résumé.bin", FILE_5MB)
    status, _, data = site_checked("django", via).browser().request(
        "POST", f"{PREFIX}/upload/", body, {"Content-Type": content_type})
    assert status == 200, data[:2000]
    assert json.loads(data) == {"name": "résumé.bin", "size": 5 * 1024 * 1024,
                                "sha256": hashlib.sha256(FILE_5MB).hexdigest(),
                                "note": "zoë"}


@pytest.mark.parametrize("via", VIAS)
def test_django_utf8_path_and_query(site_checked: Any, via: str) -> None:
    """A UTF-8 path segment and query string arrive decoded, the prefix kept apart."""
    path = f"{PREFIX}/uni/{quote('été €')}/?q={quote('✓ ok')}"
    status, _, data = site_checked("django", via).browser().request("GET", path)
    assert status == 200, data[:2000]
    assert json.loads(data) == {"word": "été €", "q": "✓ ok",
                                "path": f"{PREFIX}/uni/été €/", "path_info": "/uni/été €/"}


@pytest.mark.parametrize("via", VIAS)
def test_django_form_csrf_session_redirect(site_checked: Any, via: str) -> None:
    """A form with a CSRF token: POST, redirect under the prefix, the session remembers."""
    browser = site_checked("django", via).browser()
    status, _, page = browser.request("GET", f"{PREFIX}/form/")
    assert status == 200
    status, headers, _ = browser.form(f"{PREFIX}/form/",
                                      {"name": "Zoë", "csrfmiddlewaretoken": _csrf_token(page)})
    assert (status, headers["Location"]) == (302, f"{PREFIX}/thanks/")
    status, _, page = browser.request("GET", headers["Location"])
    assert (status, page.decode()) == (200, "thanks Zoë")


# ------------------------------------------------------------------ Flask


@pytest.mark.parametrize("via", VIAS)
def test_flask_json_post(site_checked: Any, via: str) -> None:
    """A JSON POST comes back parsed, with 201."""
    payload = {"items": [{"name": "naïve", "n": i} for i in range(1000)]}
    status, headers, data = site_checked("flask", via).browser().request(
        "POST", f"{PREFIX}/api/items", json.dumps(payload).encode(),
        {"Content-Type": "application/json"})
    assert (status, headers["Content-Type"]) == (201, "application/json")
    assert json.loads(data) == {"received": payload, "count": 1000}


@pytest.mark.parametrize("via", VIAS)
def test_flask_multipart_upload_5mb(site_checked: Any, via: str) -> None:
    """A 5 MiB file in a multipart form reaches request.files whole."""
    body, content_type = multipart({"note": "zoë"}, "file", "résumé.bin", FILE_5MB)
    status, _, data = site_checked("flask", via).browser().request(
        "POST", f"{PREFIX}/upload", body, {"Content-Type": content_type})
    assert status == 200, data[:2000]
    assert json.loads(data) == {"filename": "résumé.bin", "size": 5 * 1024 * 1024,
                                "sha256": hashlib.sha256(FILE_5MB).hexdigest(),
                                "note": "zoë"}


@pytest.mark.parametrize("via", VIAS)
def test_flask_chunked_multipart_upload(site_checked: Any, via: str) -> None:
    """A multipart upload sent chunked (no Content-Length, as curl -T - does) arrives
    whole: Werkzeug reads to the end because the server offers wsgi.input_terminated."""
    content = FILE_5MB[:1_500_000]
    body, content_type = multipart({"note": "chunked"}, "file", "stream.bin", content)
    pieces = [body[pos:pos + 100_000] for pos in range(0, len(body), 100_000)]
    conn = http.client.HTTPConnection("127.0.0.1", site_checked("flask", via).port,
                                      timeout=TIMEOUT)
    try:
        conn.request("POST", f"{PREFIX}/upload", body=iter(pieces), encode_chunked=True,
                     headers={"Content-Type": content_type, "Transfer-Encoding": "chunked"})
        response = conn.getresponse()
        status, data = response.status, response.read()
    finally:
        conn.close()
    assert status == 200, data[:2000]
    assert json.loads(data) == {"filename": "stream.bin", "size": 1_500_000,
                                "sha256": hashlib.sha256(content).hexdigest(),
                                "note": "chunked"}


@pytest.mark.parametrize("via", VIAS)
def test_flask_redirect_and_url_for_under_prefix(site_checked: Any, via: str) -> None:
    """redirect(url_for(...)) and url_for(_external=True) carry the SCRIPT_NAME prefix."""
    site = site_checked("flask", via)
    browser = site.browser()
    status, headers, _ = browser.request("GET", f"{PREFIX}/go")
    assert (status, headers["Location"]) == (302, f"{PREFIX}/target?page=2")
    status, _, data = browser.request("GET", headers["Location"])
    assert status == 200
    answer = json.loads(data)
    assert (answer["script_root"], answer["path"]) == (PREFIX, "/target")
    assert re.fullmatch(rf"http://127\.0\.0\.1(:{site.port})?{PREFIX}/target", answer["url"])


@pytest.mark.parametrize("via", VIAS)
def test_flask_utf8_path_and_query(site_checked: Any, via: str) -> None:
    """A UTF-8 path segment and query string arrive decoded; url_for quotes them again."""
    path = f"{PREFIX}/uni/{quote('été €')}?q={quote('✓ ok')}"
    status, _, data = site_checked("flask", via).browser().request("GET", path)
    assert status == 200, data[:2000]
    assert json.loads(data) == {"word": "été €", "q": "✓ ok", "path": "/uni/été €",
                                "url": f"{PREFIX}/uni/{quote('été €')}"}

