"""How a ``package.module:attribute`` target is imported: one rule for the whole package.

A daemon's ``type``, a listener's ``wsgi``/``native`` application, the CLI's
in-process WSGI application and any later target written in a YAML file go through
`import_target`, so they agree on the syntax and on the reasons an import fails.
(The stdlib-only CGI frontend keeps its own few lines: it must not load more than
the standard library per request.)
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["TargetImportError", "import_target", "split_target"]


class TargetImportError(ImportError):
    """A target cannot be imported; ``str()`` says why, for users."""


def split_target(target: str, *, default: str | None = None) -> tuple[str, str]:
    """``(module, attribute path)`` of ``"module:attr.path"``; ``default`` when no
    attribute is given (``"myapp.web"`` with default ``application``)."""
    module_name, _, attribute = target.partition(":")
    return module_name, attribute or (default or "")


def import_target(target: str, *, default: str | None = None,
                  as_written: bool = False) -> Any:
    """The object ``target`` ("package.module:attr.path") names.

    Raises TargetImportError: ``cannot import module 'm': ...`` (the module is not
    there), ``importing module 'm' failed: Error: ...`` (it raised while importing)
    or ``module 'm' has no attribute 'a.b'``. With ``as_written`` the messages name the
    whole target as the user wrote it instead (a listener's ``wsgi: m:app``):
    ``cannot import 'm:app': ...``, ``importing 'm:app' failed: Error: ...`` and
    ``cannot import 'm:app': module 'm' has no attribute 'app'``.
    """
    module_name, attribute = split_target(target, default=default)
    named = repr(target) if as_written else f"module {module_name!r}"
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise TargetImportError(f"cannot import {named}: {e}") from e
    except Exception as e:  # the module itself failed while it was imported
        raise TargetImportError(f"importing {named} failed: "
                                f"{type(e).__name__}: {e}") from e
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            missing = f"module {module_name!r} has no attribute {attribute!r}"
            raise TargetImportError(f"cannot import {named}: {missing}" if as_written
                                    else missing) from None
    return found
