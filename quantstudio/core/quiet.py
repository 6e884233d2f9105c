"""Silencing libraries' logging and warnings that a user cannot act on, for the span of a call."""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterable, Iterator


@contextlib.contextmanager
def quiet_loggers(names: Iterable[str], level: int = logging.ERROR, ignore_warnings: bool = True) -> Iterator[None]:
    """Raise the named loggers to ``level`` (and ignore Python warnings) inside the block;
    everything is put back as it was afterwards."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        if ignore_warnings:
            warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(level)
        try:
            yield
        finally:
            for lg, lv in zip(loggers, levels):
                lg.setLevel(lv)
