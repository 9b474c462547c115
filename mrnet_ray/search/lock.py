"""One owner per search: the lock files a search's driver holds while it runs.

Two ``tune`` processes share a search when they share either of its two places: the run
directory (``search.json``, the Optuna journal, a local MLflow store) or its Tune experiment
in the results root (``<storage>/<name>``: Tune's state and checkpoints; the MLflow search run
is found by that path too). :func:`hold` locks both, ``<run-dir>/search.lock`` and
``<storage>/<name>/mrnet_ray/search.lock``, before the search reads or writes anything else;
a second ``tune`` on either stops in one line naming the owner's pid and host.

- The lock names its owner (pid, host, start time), and the owner renews it every
  :data:`HEARTBEAT_S` while it runs.
- A lock on a filesystem is also held with ``flock``, which the kernel releases when its
  process ends, however it ends. A lock left by a killed driver of this host is taken over at
  once (its pid is gone), and that is said.
- A lock of another host cannot be checked by pid (and NFS need not carry ``flock`` between
  hosts): a start watches it for :data:`STALE_S` and takes it over, saying so, only if it was
  not renewed meanwhile (its head died: a new head resumes). A driver stopped for longer than
  that (SIGSTOP, a suspended machine) loses its lock to the next start.
- On an object store (``s3://``) a lock is an object, written and read back :data:`SETTLE_S`
  later: of starts that overlap, only the last writer reads its own token back and goes on
  (object stores return the latest write). pyarrow has no conditional write, so a start that
  stalls for longer than ``SETTLE_S`` between its check and its write is not caught.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from mrnet_ray import storage
from mrnet_ray.errors import UserError
from mrnet_ray.search.settings import SearchSettings

logger = logging.getLogger(__name__)

LOCK = "search.lock"
SETTLE_S = 1.0
"""How long an object-store lock waits before reading its write back."""
OWNER_WAIT_S = 3.0
"""How long a refused start waits for a lock's owner to have written who it is."""
HEARTBEAT_S = 5.0
"""How often an owner renews its lock."""
STALE_S = 20.0
"""How long a start watches a lock of another host for a renewal before taking it over."""


@dataclass(frozen=True)
class Owner:
    """The process holding a lock, as its lock file names it."""

    pid: int
    host: str
    since: str
    """When it took the lock (local time)."""
    token: str
    """Random: tells two writers of an object-store lock apart."""
    renewed: str = ""
    """When it last renewed the lock (seconds since the epoch; fixed width)."""

    @classmethod
    def this_process(cls) -> Owner:
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        return cls(os.getpid(), socket.gethostname(), since, secrets.token_hex(8)).renew()

    @classmethod
    def parse(cls, data: bytes | None) -> Owner | None:
        """The owner a lock file names; None for an empty or unreadable one."""
        try:
            d = json.loads(data or b"")
            owner = cls(
                int(d["pid"]), str(d["host"]), str(d["since"]), str(d["token"]),
                str(d.get("renewed", "")),
            )  # fmt: skip
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        return owner if owner.pid > 0 else None

    def renew(self) -> Owner:
        return dataclasses.replace(self, renewed=f"{time.time():017.3f}")

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    def alive(self) -> bool | None:
        """Whether it still runs; None when it ran on another host (no asking it)."""
        if self.host != socket.gethostname():
            return None
        return storage.pid_alive(self.pid)

    def __str__(self) -> str:
        return f"pid {self.pid} on host {self.host} (since {self.since})"


class SearchLock:
    """The lock at ``location`` (a path or an ``s3://`` URI) of search ``search``; ``say``
    tells the user why a start waits (watching another host's lock)."""

    def __init__(
        self,
        location: str,
        search: str,
        *,
        stale_s: float = STALE_S,
        heartbeat_s: float = HEARTBEAT_S,
        say: Callable[[str], None] = print,
    ) -> None:
        self.location, self.search = location, search
        self.stale_s, self.heartbeat_s, self.say = stale_s, heartbeat_s, say
        self.shown = location.partition("?")[0]  # without pyarrow's URI options
        self.owner = Owner.this_process()
        self._fd: int | None = None
        self._made: list[Path] = []
        self._object = False
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self) -> str:
        """Take the lock and renew it from then on: returns a note when it took over a stale
        one, else ``""``; UserError (one line) when another process holds it or may."""
        note = self._acquire_object() if "://" in self.location else self._acquire_file()
        self._beat = threading.Thread(target=self._renew, name="search-lock", daemon=True)
        self._beat.start()
        return note

    def release(self) -> None:
        """Give the lock up (remove the file or object, if it is still this process's)."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        if self._fd is not None:
            with contextlib.suppress(OSError):
                held = Owner.parse(self._read())
                mine = held is not None and held.token == self.owner.token
                if mine and os.fstat(self._fd).st_ino == os.stat(self.location).st_ino:
                    os.unlink(self.location)  # before unlocking: nobody locks a dead file
            os.close(self._fd)
            self._fd = None
            for folder in self._made:  # made for the lock alone: a refused start leaves none
                try:
                    os.rmdir(folder)
                except OSError:
                    break
        if self._object:
            with contextlib.suppress(OSError, UserError):
                held = Owner.parse(storage.read_bytes(self.location))
                if held is not None and held.token == self.owner.token:
                    storage.delete(self.location)
            self._object = False

    def _write(self) -> None:
        """Write this process's name into the lock (a fixed length: readers never see a
        mix of two writes)."""
        data = self.owner.to_bytes()
        if self._fd is not None:
            os.pwrite(self._fd, data, 0)
            os.ftruncate(self._fd, len(data))
            os.fsync(self._fd)
        else:
            storage.write_bytes(self.location, data)

    def _renew(self) -> None:
        """Renew the lock every ``heartbeat_s`` until released. A failed renewal is logged
        once (another start may then take the lock over after ``stale_s``); a lock another
        start took over (this process stalled for longer than that) is said, and left to it."""
        warned = False
        while not self._stop.wait(self.heartbeat_s):
            try:
                holder = Owner.parse(self._read())
                if holder is not None and holder.token != self.owner.token:
                    logger.warning(
                        "search %s: %s took over the lock %s while this process held it "
                        "(it did not renew it for too long); two drivers may now run it",
                        self.search, holder, self.shown,
                    )  # fmt: skip
                    return
                self.owner = self.owner.renew()
                self._write()
            except (OSError, UserError) as e:
                if not warned:
                    logger.warning("could not renew the search's lock %s (%s)", self.shown, e)
                    warned = True

    def _read(self) -> bytes | None:
        if self._fd is not None:
            return os.pread(self._fd, 4096, 0)
        return storage.read_bytes(self.location)

    def _acquire_file(self) -> str:
        path = Path(self.location)
        self._made = [d for d in path.parents if not d.exists()]  # removed again on release
        while True:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # a released lock's empty directory, just removed
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._wait_for_owner(functools.partial(os.pread, fd, 4096, 0))
                os.close(fd)
                raise UserError(self._busy(holder)) from None
            try:
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)  # its owner removed it between our open and our lock: again
        try:
            note = self._stale_note(functools.partial(storage.read_bytes, str(path)), flocked=True)
            self._fd = fd
            self._write()
        except BaseException:
            self._fd = None
            os.close(fd)
            raise
        return note

    def _acquire_object(self) -> str:
        note = self._stale_note(self._read, flocked=False)
        self._write()
        time.sleep(SETTLE_S)
        holder = Owner.parse(self._read())
        if holder is None or holder.token != self.owner.token:
            raise UserError(self._busy(holder))
        self._object = True
        return note

    def _wait_for_owner(self, read: Callable[[], bytes | None]) -> Owner | None:
        """The owner of a lock just taken, once it has written its name (briefly)."""
        deadline = time.monotonic() + OWNER_WAIT_S
        while (holder := Owner.parse(read())) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        return holder

    def _stale_note(self, read: Callable[[], bytes | None], flocked: bool) -> str:
        """A lock found with an owner named in it: taken over if that owner is gone (the note
        says so), else UserError. ``flocked``: this process holds the file's ``flock``, so an
        owner of this host does not (its pid, if it runs, is another process's now)."""
        data = read()
        previous = Owner.parse(data)
        if previous is None:
            return ""
        taken = f"took over the lock {self.shown} of search {self.search}: its owner, {previous},"
        alive = previous.alive()
        if alive is False:
            return f"{taken} is no longer running"
        if alive and flocked:
            return f"{taken} no longer holds it"
        if self._renewed(previous, data, read):
            raise UserError(self._busy(previous))
        return f"{taken} has not renewed it for {self.stale_s:g} s"

    def _renewed(
        self, previous: Owner, data: bytes | None, read: Callable[[], bytes | None]
    ) -> bool:
        """Whether the lock (``data``, naming ``previous``) changes within ``stale_s``: its
        owner renews it, or another start took it."""
        self.say(
            f"search {self.search}: the lock {self.shown} names {previous}, which this host "
            f"cannot ask; waiting up to {self.stale_s:g} s for it to be renewed"
        )
        deadline = time.monotonic() + self.stale_s
        while time.monotonic() < deadline:
            time.sleep(min(0.5, self.stale_s / 4))
            if read() != data:
                return True
        return False

    def _busy(self, holder: Owner | None) -> str:
        """The one line of a refused start."""
        who = str(holder) if holder else "another process, starting at the same moment,"
        return (
            f"search {self.search} is already running: {who} holds {self.shown}; wait for it "
            "to end, or stop it"
        )


def locations(settings: SearchSettings) -> list[str]:
    """The search's locks: in its run directory, then beside its Tune experiment."""
    return [str(Path(settings.run_dir) / LOCK), settings.in_results(LOCK)]


@contextlib.contextmanager
def hold(settings: SearchSettings, say: Callable[[str], None] = print) -> Iterator[list[str]]:
    """Hold every lock of the search for the block; yields the notes of stale locks taken
    over. UserError, holding nothing, when another process owns either."""
    taken: list[SearchLock] = []
    notes = []
    try:
        for location in dict.fromkeys(locations(settings)):
            lock = SearchLock(location, settings.name, say=say)
            notes.append(lock.acquire())
            taken.append(lock)
        yield [n for n in notes if n]
    finally:
        for lock in reversed(taken):
            lock.release()
