"""After a background write fails, the libraries' own echoes of that error stay one line each."""

from __future__ import annotations

import logging
import sys
import types

from training import log_setup


def test_orbax_error_records_keep_their_first_line_and_lose_the_traceback():
    try:
        raise ValueError("RESOURCE_EXHAUSTED: disk full\ndetail line")
    except ValueError:
        record = logging.LogRecord("absl", logging.ERROR, __file__, 1, "thread %s failed:\n%s", ("t1", "more"), None)
        record.exc_info = sys.exc_info()
    assert log_setup._FirstLineOnly().filter(record)
    assert record.getMessage() == "thread t1 failed:" and record.exc_info is None
    warning = logging.LogRecord("absl", logging.WARNING, __file__, 1, "two\nlines", None, None)
    log_setup._FirstLineOnly().filter(warning)
    assert warning.getMessage() == "two\nlines"


def test_only_closed_loop_echoes_are_dropped_from_unraisable_exceptions():
    seen = []
    hook = log_setup._unraisable_hook(seen.append)
    closed = types.SimpleNamespace(exc_value=RuntimeError("Event loop is closed"))
    other = types.SimpleNamespace(exc_value=RuntimeError("something else"))
    hook(closed)
    hook(other)
    assert seen == [other]


def test_setup_logging_installs_the_hook_once():
    before = sys.unraisablehook
    try:
        sys.unraisablehook = print
        log_setup.setup_logging()
        installed = sys.unraisablehook
        assert installed is not print and installed.drops_closed_loop_echoes
        log_setup.setup_logging()
        assert sys.unraisablehook is installed
        for name in ("absl", "asyncio"):
            assert sum(isinstance(f, log_setup._FirstLineOnly) for f in logging.getLogger(name).filters) == 1
    finally:
        sys.unraisablehook = before
