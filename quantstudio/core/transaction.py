"""One export = one transaction: the old set of files or the complete new set, never a mix.

An export writes several files that belong together (the model, maybe a second model
in the other format, its recipe, an HTML report). Renaming one file is atomic, renaming
three is not: a kill between two renames would leave a new model beside an old recipe.

Why the design holds (the whole argument):

1. Every new file is written to a temporary beside its target (``.NAME.<12 hex>.tmp``,
   same folder, so same file system) and fsynced; nothing the user has is touched yet.
   A failure, a cancel or SIGTERM here deletes the temporaries: the old set stays.
2. Each existing target gets a hard link (a copy where links are not possible) under
   another temporary name: the old set survives any later step.
3. A journal (``.quantstudio-<12 hex>.export-journal.json``, itself written atomically)
   lists target, temporary, backup and the sha256 of every new file. The journal's
   rename is the commit point: before it, the old set is the truth; after it, the new.
4. The temporaries are renamed over their targets, the folder is fsynced, and the
   journal, then the backups, are deleted.
5. A kill during 4 leaves the journal. The next export to that folder, and the next
   start of the CLI or the app (which visit the recently exported-to folders), roll it
   forward: a temporary still present is renamed; one already renamed is checked by
   its sha256. If that is impossible (a file gone), the backups roll the set back.
   Either way the folder ends as one complete set and the journal is removed.

A journal of a process that is still running (same host, pid alive, under 10 minutes
old) is left alone: that export is committing right now. Stale temporaries (our
naming, older than a minute, in a folder QuantStudio exports to, named by no live
journal) are removed: they are what a SIGKILL during step 1 leaves.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from quantstudio.core.errors import InputError

TEMP_RE = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")
JOURNAL_RE = re.compile(r"^\.quantstudio-[0-9a-f]{12}\.export-journal\.json$")
STALE_TEMP_SECONDS = 60.0  # younger temporaries may belong to an export in progress
LIVE_JOURNAL_SECONDS = 600.0  # an older journal is dead even if its pid was reused
RECENT_FOLDERS = 20
_COMMITTING: set[Path] = set()  # journals this process is committing right now (another thread may look)


# --------------------------------------------------------------------------- names


def temp_path_beside(path: Path) -> Path:
    """A fresh, hidden temporary file name in ``path``'s folder (same file system)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
        try:
            # 0o666 minus the umask: the final file gets the usual permissions
            # (mkstemp would leave it readable by its owner only).
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not possible on every platform (Windows); the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- checks


def check_targets(targets: Sequence[Path], protect: Sequence[str | Path | None] = ()) -> None:
    """InputError naming the first target that cannot be written, before any work.

    A folder in the way, a read-only file, a file in the way of a folder, a folder
    without write permission, or a file that must not be overwritten (``protect``:
    the recipe being read, the model being quantized) all fail here.
    """
    protected = {Path(p).resolve() for p in protect if p}
    for path in targets:
        path = Path(path)
        if path.resolve() in protected:
            raise InputError(
                "this export would overwrite a file it is reading",
                path=path,
                hint="Choose another output name, so the file being read stays as it is.",
            )
        if path.is_dir():
            raise InputError("a folder is in the way of this file", path=path,
                             hint="Rename or move that folder, or choose another output name.")
        if path.exists() and not os.access(path, os.W_OK):
            raise InputError("this file is read-only, so it cannot be replaced", path=path,
                             hint="Make it writable, or choose another output name.")
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise InputError("cannot create the output folder: a file is in the way", path=folder,
                             hint="Choose another output path.")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise InputError("no permission to write in this folder", path=folder,
                             hint="Choose a folder you can write to.")


# --------------------------------------------------------------------------- transaction


@dataclass
class _Entry:
    target: Path
    temp: Path
    backup: Path | None = None
    sha256: str = ""
    existed: bool = False


class ExportTransaction:
    """Temporaries for a set of targets in one folder, committed all together (see module doc).

    Use as a context manager: leaving the block without :meth:`commit` deletes the
    temporaries (failure, cancel, SIGTERM turned into a cancel).
    """

    def __init__(self, targets: Sequence[str | Path], *, protect: Sequence[str | Path | None] = ()) -> None:
        self.targets = [Path(t) for t in targets]
        folders = {t.parent.resolve() if t.parent.exists() else t.parent.absolute() for t in self.targets}
        if len(folders) != 1:
            raise ValueError(f"an export transaction needs one folder, got {sorted(map(str, folders))}")
        check_targets(self.targets, protect)
        self.folder = self.targets[0].parent
        self.folder.mkdir(parents=True, exist_ok=True)
        self.notes = recover_folder(self.folder)  # an earlier interrupted export here comes first
        remember_export_folder(self.folder)
        self._entries: dict[Path, _Entry] = {}
        self.committed = False
        self._journaled = False

    def __enter__(self) -> "ExportTransaction":
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    def temp_for(self, target: str | Path) -> Path:
        """The temporary that becomes ``target`` on commit (created empty)."""
        target = Path(target)
        if target not in self.targets:
            raise ValueError(f"{target} is not a target of this export")
        if target not in self._entries:
            self._entries[target] = _Entry(target, temp_path_beside(target))
        return self._entries[target].temp

    def write_bytes(self, target: str | Path, data: bytes) -> Path:
        tmp = self.temp_for(target)
        with open(tmp, "wb") as f:
            f.write(data)
        return tmp

    def write_text(self, target: str | Path, text: str) -> Path:
        return self.write_bytes(target, text.encode("utf-8"))

    def discard(self) -> None:
        """Delete what was not committed (temporaries; after a commit, nothing is left)."""
        if self.committed or self._journaled:
            return  # the journal owns the files now: what is left of them, the next start needs
        for e in self._entries.values():
            e.temp.unlink(missing_ok=True)
            if e.backup is not None:
                e.backup.unlink(missing_ok=True)

    def commit(self) -> None:
        """Rename every temporary over its target, as one step (see the module doc)."""
        missing = [t for t in self.targets if t not in self._entries]
        if missing:
            raise ValueError(f"nothing written for {missing}")
        entries = list(self._entries.values())
        for e in entries:  # step 1 done by the writer; make it durable
            fsync_file(e.temp)
            e.sha256 = sha256_of(e.temp)
        for e in entries:  # step 2: the old set survives whatever comes next
            if e.target.exists():
                e.existed = True
                e.backup = _backup(e.target)
        journal = self.folder / f".quantstudio-{uuid.uuid4().hex[:12]}.export-journal.json"
        _COMMITTING.add(journal.resolve())
        _write_journal(journal, entries)  # step 3: the commit point
        self._journaled = True
        try:
            for e in entries:  # step 4
                os.replace(e.temp, e.target)
            fsync_dir(self.folder)
        except OSError:
            _COMMITTING.discard(journal.resolve())
            # The disk refused a rename (e.g. a file locked on Windows): the user gets
            # the old set back and an error, not a half-replaced one.
            if _roll_back(entries):
                journal.unlink(missing_ok=True)
            raise
        except BaseException:
            _COMMITTING.discard(journal.resolve())
            # Interrupted (a second Ctrl+C, SIGTERM turned into KeyboardInterrupt): the
            # new set is complete on disk, finishing is the short way to a whole set.
            if _roll_forward(entries) or _roll_back(entries):
                journal.unlink(missing_ok=True)
            raise
        self.committed = True
        journal.unlink(missing_ok=True)
        _COMMITTING.discard(journal.resolve())
        fsync_dir(self.folder)
        for e in entries:
            if e.backup is not None:
                e.backup.unlink(missing_ok=True)


def _backup(target: Path) -> Path:
    backup = temp_path_beside(target)
    backup.unlink()
    try:
        os.link(target, backup)  # no copy: the old file's data stays where it is
    except OSError:
        shutil.copy2(target, backup)  # file systems without hard links
        fsync_file(backup)
    return backup


def _write_journal(journal: Path, entries: list[_Entry]) -> None:
    doc = {
        "version": 1,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "created": time.time(),
        "entries": [{"target": e.target.name, "temp": e.temp.name, "backup": e.backup.name if e.backup else None,
                     "sha256": e.sha256, "existed": e.existed} for e in entries],
    }
    tmp = temp_path_beside(journal)
    try:
        tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")
        fsync_file(tmp)
        os.replace(tmp, journal)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(journal.parent)


def _roll_forward(entries: list[_Entry]) -> bool:
    """Every target holds its new file; False when that cannot be reached."""
    try:
        for e in entries:
            if e.temp.exists():
                os.replace(e.temp, e.target)
            elif not (e.target.is_file() and sha256_of(e.target) == e.sha256):
                return False
        fsync_dir(entries[0].target.parent)
    except OSError:
        return False
    for e in entries:
        if e.backup is not None:
            e.backup.unlink(missing_ok=True)
    return True


def _roll_back(entries: list[_Entry]) -> bool:
    """Every target holds its old file again (or is gone if it had none); False on failure."""
    try:
        for e in entries:
            if e.backup is not None and e.backup.exists():
                os.replace(e.backup, e.target)
                # rename() between two links of one file does nothing (POSIX): the target
                # was never replaced, and the backup name is still there.
                e.backup.unlink(missing_ok=True)
            elif not e.existed and e.target.is_file() and e.sha256 and sha256_of(e.target) == e.sha256:
                e.target.unlink()
            e.temp.unlink(missing_ok=True)
        fsync_dir(entries[0].target.parent)
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- recovery


def _journal_is_live(doc: dict, journal: Path) -> bool:
    if doc.get("host") != socket.gethostname():
        return False
    try:
        age = time.time() - journal.stat().st_mtime
    except OSError:
        return False
    if age > LIVE_JOURNAL_SECONDS:
        return False
    pid = int(doc.get("pid") or 0)
    if pid == os.getpid():
        return journal.resolve() in _COMMITTING  # else left over from a commit of ours that could not finish
    return _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if sys.platform == "win32":  # os.kill(pid, 0) would terminate the process there
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        ctypes.windll.kernel32.CloseHandle(handle)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_folder(folder: str | Path) -> list[str]:
    """Finish interrupted exports in ``folder`` and remove stale temporaries; one note per repair."""
    folder = Path(folder)
    notes: list[str] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return notes
    keep: set[str] = set()  # files of exports committing right now in another process
    for name in sorted(n for n in names if JOURNAL_RE.match(n)):
        journal = folder / name
        try:
            doc = json.loads(journal.read_text(encoding="utf-8"))
            entries = [_Entry(folder / d["target"], folder / d["temp"], folder / d["backup"] if d.get("backup") else None,
                              str(d.get("sha256") or ""), bool(d.get("existed"))) for d in doc["entries"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable: leave it for a person rather than guess
        if _journal_is_live(doc, journal):
            keep.update(e.temp.name for e in entries)
            keep.update(e.backup.name for e in entries if e.backup is not None)
            continue
        files = ", ".join(e.target.name for e in entries)
        if _roll_forward(entries):
            notes.append(f"finished an interrupted export in {folder}: {files} are the new set")
        elif _roll_back(entries):
            notes.append(f"undid an interrupted export in {folder}: {files} are the earlier set")
        else:
            notes.append(f"could not repair an interrupted export in {folder} ({files}); the journal {name} is kept")
            continue
        journal.unlink(missing_ok=True)
    now = time.time()
    for name in names:
        if not TEMP_RE.match(name) or name in keep:
            continue
        p = folder / name
        try:
            if p.is_file() and now - p.stat().st_mtime > STALE_TEMP_SECONDS:
                p.unlink()
        except OSError:
            pass
    return notes


# --------------------------------------------------------------------------- recent folders


def state_dir() -> Path:
    """Where QuantStudio keeps small state files (no Qt here: the CLI uses it too)."""
    override = os.environ.get("QUANTSTUDIO_DATA_DIR")
    if override:
        return Path(override)
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home()) / "QuantStudio"
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "quantstudio"


def _registry() -> Path:
    return state_dir() / "export-folders.json"


def recent_export_folders() -> list[Path]:
    try:
        return [Path(p) for p in json.loads(_registry().read_text(encoding="utf-8"))]
    except (OSError, ValueError, TypeError):
        return []


def remember_export_folder(folder: str | Path) -> None:
    """Record ``folder`` so the next start can repair an export killed there."""
    folder = str(Path(folder).resolve())
    folders = [folder] + [str(p) for p in recent_export_folders() if str(p) != folder]
    registry = _registry()
    try:
        registry.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path_beside(registry)
        try:
            tmp.write_text(json.dumps(folders[:RECENT_FOLDERS], indent=1), encoding="utf-8")
            os.replace(tmp, registry)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError:
        pass  # only a convenience: the next export to that folder repairs it anyway


def recover_recent() -> list[str]:
    """At start: repair the recently exported-to folders (cheap: a listing each)."""
    notes: list[str] = []
    for folder in recent_export_folders():
        if folder.is_dir():
            notes += recover_folder(folder)
    return notes
