"""The job child: ``python -m daemonapp.jobs.child``, run by the dispatcher per job.

It first ties its life to its parent (PR_SET_PDEATHSIG, then a getppid()
check) and caps its address space (RLIMIT_AS), then reads the job on
stdin, imports the app's job modules, runs the ``@job`` handler and writes the
outcome on fd 3. Progress goes to fd 4. The job description and the outcome
are ``marshal`` data (JSON's types, no import): no Twisted, json or typing
here, so a child starts in a few milliseconds.
"""

from __future__ import annotations

import marshal
import os
import sys

TYPE_CHECKING = False  # mypy reads it as true; the child never imports typing
if TYPE_CHECKING:
    from typing import Any

RESULT_FD = 3
PROGRESS_FD = 4
MAX_INPUT_BYTES = 4 * 1024 * 1024
MAX_TRACEBACK_BYTES = 64 * 1024  # of UTF-8, as the store keeps it (DESIGN §6)
EXIT_ORPHANED = 70
EXIT_USAGE = 64
_PR_SET_PDEATHSIG = 1
_SIGKILL = 9  # signal.SIGKILL on Linux; importing signal costs a millisecond


def _prctl() -> Any:
    """libc's prctl through ctypes' core (_ctypes): ``import ctypes`` costs ~3 ms a job."""
    try:
        import _ctypes

        core: Any = _ctypes  # its private names are not in typeshed

        class _Int(core._SimpleCData):  # type: ignore[misc]
            _type_ = "i"

        class _Function(core.CFuncPtr):  # type: ignore[misc]
            _flags_ = core.FUNCFLAG_CDECL
            _restype_ = _Int

        class _Library:
            _handle = core.dlopen(None, os.RTLD_NOW)

        return _Function(("prctl", _Library()))
    except Exception:  # another interpreter's _ctypes: take the public road
        import ctypes

        return ctypes.CDLL(None).prctl


def die_with_parent(parent: int) -> bool:
    """Ask the kernel for SIGKILL when the parent dies; False if it already has."""
    if sys.platform.startswith("linux"):
        _prctl()(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)
    # The parent may have died before prctl: then we were re-parented already.
    return os.getppid() == parent


def limit_memory(limit: int) -> None:
    """Cap the virtual address space (RLIMIT_AS) at ``limit`` bytes."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _read_job(stream: Any) -> dict[str, Any]:
    data = stream.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise ValueError(f"the job description exceeds {MAX_INPUT_BYTES} bytes")
    try:
        value = marshal.loads(data)  # noqa: S302 - from our own parent, over stdin
    except (EOFError, TypeError, ValueError):
        raise ValueError("the job description is not marshal data") from None
    if not isinstance(value, dict):
        raise ValueError("the job description is not a dict")
    return value


def _format_failure(exc: BaseException, memory_limit: int | None) -> tuple[str, str]:
    import traceback

    text = "".join(traceback.format_exception(exc))
    data = text.encode("utf-8", "surrogatepass")
    if len(data) > MAX_TRACEBACK_BYTES:  # the end kept: the exception line
        text = "...[cut]...\n" + data[-(MAX_TRACEBACK_BYTES - 12):].decode("utf-8", "ignore")
    summary = "".join(traceback.format_exception_only(exc)).strip()
    if isinstance(exc, MemoryError) and memory_limit:
        summary = f"MemoryError: the job exceeded its memory_limit of {memory_limit} bytes"
    return summary[:4096], text


def _write_result(outcome: dict[str, Any]) -> None:
    try:
        data = marshal.dumps(outcome)
    except ValueError:  # a result marshal cannot carry: send its repr
        data = marshal.dumps({**outcome, "result": repr(outcome.get("result"))})
    try:
        os.set_blocking(RESULT_FD, True)
        while data:
            data = data[os.write(RESULT_FD, data):]
        os.close(RESULT_FD)
    except OSError:
        pass


def run(description: dict[str, Any], memory_limit: int | None) -> dict[str, Any]:
    """Import the job's modules, run its handler, and say how it went."""
    import importlib

    from daemonapp.jobs import runtime

    try:
        for module in description.get("modules") or ():
            importlib.import_module(str(module))
        kind = str(description["kind"])
        handler = runtime.handler_for(kind)
        if handler is None:
            known = ", ".join(runtime.registered_kinds()) or "none"
            raise LookupError(f"no @job handler for kind {kind!r} in modules "
                              f"{description.get('modules')!r} (known: {known})")
        current = runtime.CurrentJob(id=int(description["id"]), kind=kind,
                                     attempt=int(description["attempt"]),
                                     token=int(description["token"]))
        try:
            fd: int | None = PROGRESS_FD
            os.fstat(PROGRESS_FD)
        except OSError:
            fd = None
        runtime._enter(current, fd)
        try:
            result = handler(description.get("payload") or {})
        finally:
            runtime._leave()
    except BaseException as exc:  # the job's own errors, SystemExit included
        if isinstance(exc, KeyboardInterrupt):
            raise
        if isinstance(exc, MemoryError):
            _free_memory(exc)
        error, text = _format_failure(exc, memory_limit)
        return {"ok": False, "error": error, "traceback": text}
    return {"ok": True, "result": result}


# Address space held back while a job runs under memory_limit, freed on a
# MemoryError so that the traceback can be imported and formatted.
_reserve: bytearray | None = None
RESERVE_BYTES = 4 * 1024 * 1024


def _free_memory(exc: BaseException) -> None:
    """Let go of what the failed job held: the reserve and its frames' locals."""
    global _reserve
    _reserve = None
    tb = exc.__traceback__
    while tb is not None:
        try:
            tb.tb_frame.clear()  # the job's locals (its hoard) go; code and lines stay
        except RuntimeError:
            pass  # a frame still executing: ours
        tb = tb.tb_next


def main(argv: list[str] | None = None) -> int:
    """The child's entry point: ``--parent PID [--memory-limit BYTES]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    parent: int | None = None
    memory_limit: int | None = None
    try:
        while args:
            flag = args.pop(0)
            if flag == "--parent":
                parent = int(args.pop(0))
            elif flag == "--memory-limit":
                memory_limit = int(args.pop(0)) or None
            else:
                raise ValueError(f"unknown argument {flag!r}")
    except (IndexError, ValueError) as err:
        sys.stderr.write(f"daemonapp.jobs.child: {err}\n")
        return EXIT_USAGE
    if parent is not None and not die_with_parent(parent):
        return EXIT_ORPHANED
    if memory_limit:
        limit_memory(memory_limit)
        global _reserve
        try:
            _reserve = bytearray(RESERVE_BYTES)
        except MemoryError:
            pass
    try:
        description = _read_job(sys.stdin.buffer)
    except (ValueError, OSError) as err:
        _write_result({"ok": False, "error": f"bad job description: {err}", "traceback": ""})
        return EXIT_USAGE
    outcome = run(description, memory_limit)
    _write_result(outcome)
    sys.stdout.flush()
    sys.stderr.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
