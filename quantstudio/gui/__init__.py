"""The PySide6 desktop application (thin: every heavy step is a core job on a worker thread)."""

from quantstudio.gui.compat import guard_singleton_refcounts, quiet_feature_import_hook

guard_singleton_refcounts()
quiet_feature_import_hook()
