"""Real applications nobody here wrote, for tests/listeners/test_frameworks.py.

``django_app``: the Django project whose directory is in ``$FRAMEWORK_DJANGO_DIR``
(the test writes it into a temp dir, settings module ``site_settings``), and
``flask_app``: a small Flask app. Both are wrapped in ``wsgiref.validate.validator``,
so a PEP 3333 slip of the server (or of the app) fails the request. They are built
when first looked up (PEP 562), in the listener's process.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from typing import Any
from wsgiref.validate import validator

DJANGO_DIR = "FRAMEWORK_DJANGO_DIR"


def _django() -> Callable[..., Any]:
    project = os.environ[DJANGO_DIR]
    if project not in sys.path:
        sys.path.insert(0, project)
    os.environ["DJANGO_SETTINGS_MODULE"] = "site_settings"
    from django.core.wsgi import get_wsgi_application

    return validator(get_wsgi_application())


def _flask() -> Callable[..., Any]:
    from flask import Flask, jsonify, redirect, request, url_for

    app = Flask("framework_flask")
    app.config["MAX_CONTENT_LENGTH"] = 20 << 20

    @app.post("/api/items")
    def items() -> Any:
        data = request.get_json()
        return jsonify(received=data, count=len(data["items"])), 201

    @app.post("/upload")
    def upload() -> Any:
        stored = request.files["file"]
        content = stored.read()
        return jsonify(filename=stored.filename, size=len(content),
                       sha256=hashlib.sha256(content).hexdigest(),
                       note=request.form["note"])

    @app.get("/go")
    def go() -> Any:
        return redirect(url_for("target", page=2))

    @app.get("/target")
    def target() -> Any:
        return jsonify(url=url_for("target", _external=True),
                       script_root=request.script_root, path=request.path)

    @app.get("/uni/<word>")
    def uni(word: str) -> Any:
        return jsonify(word=word, q=request.args.get("q"), path=request.path,
                       url=url_for("uni", word=word))

    return validator(app.wsgi_app)


_BUILDERS = {"django_app": _django, "flask_app": _flask}
_built: dict[str, Callable[..., Any]] = {}


def __getattr__(name: str) -> Callable[..., Any]:
    if name not in _BUILDERS:
        raise AttributeError(name)
    if name not in _built:
        _built[name] = _BUILDERS[name]()
    return _built[name]
