"""Application start-up: QApplication, the exception hook, the main window.

torch & co. are not imported here: the window shows first; the first job imports them
on the worker thread.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from types import TracebackType

from PySide6.QtCore import QTimer
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

from quantstudio import __version__
from quantstudio.gui.settings import APPLICATION, ORGANIZATION

log = logging.getLogger("quantstudio.gui")
_in_hook = False


def excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """Log an unhandled exception and show it; the application keeps running."""
    global _in_hook
    text = "".join(traceback.format_exception(exc_type, exc, tb))
    log.error("Unhandled error:\n%s", text)
    sys.__stderr__.write(text) if sys.__stderr__ else None
    if issubclass(exc_type, KeyboardInterrupt):
        QApplication.quit()
        return
    if _in_hook or QApplication.instance() is None:
        return
    _in_hook = True
    try:
        from quantstudio.gui.dialogs import show_error

        exc.__traceback_text__ = text  # type: ignore[attr-defined]
        show_error(QApplication.activeWindow(), "Unexpected error", exc, doing="running the last action")
    finally:
        _in_hook = False


# How long a thread may keep the GIL while another waits for it (CPython's default: 5 ms).
# Every Python slot, model method or pyqtgraph paint that Qt calls from C++ takes the GIL
# anew; while the worker runs plain Python (tracing, data loading, tree building) the GUI
# thread waited up to a whole interval for each of those calls, so a plot repaint that
# makes dozens of them stalled the window for 100-350 ms (30-40 ms at 0.5 ms). A shorter
# interval only costs something while both threads want the GIL. (Code that releases
# and retakes the GIL thousands of times a second starves the GUI thread at any interval:
# see core/engines/ort/tools.py, which run in a child process for that reason.)
GIL_SWITCH_INTERVAL_S = 0.0005


def make_application(argv: list[str] | None = None) -> QApplication:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    app = QApplication.instance() or QApplication(argv if argv is not None else sys.argv)
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationName(APPLICATION)
    app.setApplicationVersion(__version__)
    app.setDesktopFileName("quantstudio")
    from quantstudio.gui.paths import icon_path

    if icon_path().exists():
        app.setWindowIcon(QIcon(str(icon_path())))
    return app


def run(model: str | None = None, demo: bool = False, argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = make_application(argv)
    sys.excepthook = excepthook
    from quantstudio.gui.main_window import MainWindow

    window = MainWindow()
    window.show()
    # An export killed halfway (power cut, kill -9) is finished or undone now, before the
    # user looks at those files (a listing of each recent export folder: cheap).
    from quantstudio.core.transaction import recover_recent

    for note in recover_recent():
        logging.getLogger("quantstudio").info("%s", note)
    if os.environ.get("QUANTSTUDIO_EXIT_WHEN_SHOWN"):
        # Start-up timing (packaging/README.md): quit once the window has been shown.
        QTimer.singleShot(0, app.quit)
    if demo:
        QTimer.singleShot(0, window.open_demo)
    elif model:
        QTimer.singleShot(0, lambda: window.open_path(model))
    return app.exec()
