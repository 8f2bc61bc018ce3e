"""Process-wide logging: one line per problem, even when a library's background thread fails."""

from __future__ import annotations

import logging
import sys

import jax


class _FirstLineOnly(logging.Filter):
    """Orbax logs a failed background write at ERROR with a full traceback, from each thread it
    passes through (and asyncio once per abandoned write task); the run itself reports the
    failure as one `error:` line, so these keep their first line and lose the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            record.msg, record.args = record.getMessage().splitlines()[0], None
            record.exc_info = record.exc_text = None
        return True


def _unraisable_hook(default):
    def hook(unraisable) -> None:
        # After Orbax's write fails, it closes its asyncio loop while tensorstore still completes
        # the other writes of that step; each completion then finds the loop closed. The write's
        # own error is already reported, so these echoes are dropped; anything else is not.
        if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
            return
        default(unraisable)

    hook.drops_closed_loop_echoes = True
    return hook


def setup_logging() -> None:
    level = logging.INFO if jax.process_index() == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s", force=True)
    # Orbax logs every save step at INFO through absl; keep its warnings only.
    logging.getLogger("absl").setLevel(logging.WARNING)
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _FirstLineOnly) for f in logger.filters):
            logger.addFilter(_FirstLineOnly())
    if not getattr(sys.unraisablehook, "drops_closed_loop_echoes", False):
        sys.unraisablehook = _unraisable_hook(sys.unraisablehook)
