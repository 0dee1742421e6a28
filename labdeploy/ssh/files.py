"""Files on the server over the connection's one SFTP session: read, write, list, remove.

Writes are atomic (a temp name created with its final mode, then renamed over), so a reader
never sees half a file and a secret is never readable by others, even for a moment. A dropped
connection reconnects and repeats the operation once (each one here can be repeated safely).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import socket
import threading
import uuid
from pathlib import Path
from typing import Callable, Optional, TypeVar, Union

import paramiko
import paramiko.sftp

from .. import localfiles
from ..errors import ConnectionLost, LabdeployError, RemoteError

ProgressCallback = Callable[[int, int], None]  # (done, total)

T = TypeVar("T")


class ChecksumMismatch(LabdeployError):
    """A downloaded file is not what the server's record says it should be."""

    code = "transfer.checksum"


class Files:
    """The SFTP part of `Remote` (uses `Connection`'s `_transport`, `_reconnect_after`, `_died`,
    `_sftp`, `_sftp_lock` and `Commands._open_session`)."""

    SFTP_TIMEOUT = 60.0  # seconds without any answer to an SFTP request: the connection is dead

    def _sftp_client(self) -> paramiko.SFTPClient:
        transport = self._transport()
        with self._sftp_lock:
            if self._sftp is None or self._sftp.get_channel() is None or self._sftp.get_channel().closed \
                    or self._sftp.get_channel().get_transport() is not transport:
                # Like SFTPClient.from_transport, but bounded in time: paramiko waits forever for
                # the subsystem and for every answer, which hangs on a silently dead connection.
                chan = self._open_session(["sftp"])
                watchdog = threading.Timer(self.connect_timeout, chan.get_transport().close)
                watchdog.daemon = True
                watchdog.start()
                try:
                    chan.settimeout(self.SFTP_TIMEOUT)
                    chan.invoke_subsystem("sftp")
                    self._sftp = paramiko.SFTPClient(chan)
                finally:
                    watchdog.cancel()
            return self._sftp

    def _sftp_call(self, what: str, fn: Callable[[paramiko.SFTPClient], T], retry: bool = True) -> T:
        """Run fn(sftp) on the shared SFTP session.

        An error the server answered (a missing file, no permission) comes back as it is. A
        dropped connection reconnects and runs fn once more (every operation here can be
        repeated safely: uploads go to a fresh temp name); if that fails too, ConnectionLost.
        """
        for attempt in (1, 2):
            with self._sftp_lock:
                transport = self._transport()
                try:
                    sftp = self._sftp_client()
                    transport = sftp.get_channel().get_transport()
                    return fn(sftp)
                except (EOFError, paramiko.SSHException, OSError) as exc:
                    if isinstance(exc, OSError) and exc.errno is not None:
                        raise  # FileNotFoundError, PermissionError, ...: the server's answer
                    if isinstance(exc, (socket.timeout, TimeoutError)) and transport.is_active():
                        # No answer for SFTP_TIMEOUT seconds: the connection silently died.
                        with contextlib.suppress(Exception):
                            transport.close()
                    if not self._died(transport):
                        raise RemoteError(f"The server {self.host} could not complete {what}: {exc}",
                                          "Check the path and its permissions on the server.",
                                          code="remote.sftp.failed") from exc
                    self._sftp = None
                    if attempt == 2 or not retry:
                        raise ConnectionLost(f"The connection to {self.host} dropped during {what}.",
                                             "Run it again; labdeploy reconnects by itself.") from exc
            self._reconnect_after(transport)
        raise AssertionError("unreachable")

    @property
    def home(self) -> str:
        if self._home is None:
            self._home = self._sftp_call("reading the home folder", lambda sftp: sftp.normalize("."))
        return self._home

    def _abs(self, path: str) -> str:
        return path if path.startswith("/") else posixpath.join(self.home, path)

    def exists(self, path: str) -> bool:
        target = self._abs(path)

        def op(sftp):
            try:
                sftp.stat(target)
                return True
            except FileNotFoundError:
                return False

        return self._sftp_call(f"checking {path}", op)

    def makedirs(self, path: str, mode: int = 0o755) -> None:
        path = self._abs(path)

        def op(sftp):
            current = ""
            for part in path.strip("/").split("/"):
                current += "/" + part
                try:
                    sftp.stat(current)
                except FileNotFoundError:
                    try:
                        sftp.mkdir(current, mode)
                        sftp.chmod(current, mode)  # mkdir's mode is masked by umask
                    except OSError:
                        sftp.stat(current)  # created meanwhile by someone else is fine

        self._sftp_call(f"creating {path}", op)

    def listdir(self, path: str) -> list[str]:
        target = self._abs(path)

        def op(sftp):
            try:
                return sorted(sftp.listdir(target))
            except FileNotFoundError:
                return []

        return self._sftp_call(f"listing {path}", op)

    def remove(self, path: str) -> None:
        target = self._abs(path)

        def op(sftp):
            with contextlib.suppress(FileNotFoundError):
                sftp.remove(target)

        self._sftp_call(f"removing {path}", op)

    def chmod(self, path: str, mode: int) -> None:
        target = self._abs(path)
        self._sftp_call(f"changing the mode of {path}", lambda sftp: sftp.chmod(target, mode))

    def _tmp_name(self, path: str) -> str:
        directory, name = posixpath.split(path)
        return posixpath.join(directory, f".{name}.labdeploy-{uuid.uuid4().hex[:12]}.tmp")

    @staticmethod
    def _create_new(sftp: paramiko.SFTPClient, path: str, mode: int) -> paramiko.SFTPFile:
        """Open a new remote file for writing that is created with `mode` (O_EXCL). paramiko's
        open() creates it with the default 0666 & umask first: for a moment anyone may open a file
        that is about to hold a secret, and keep reading it after a later chmod."""
        attrs = paramiko.SFTPAttributes()
        attrs.st_mode = mode
        flags = paramiko.sftp.SFTP_FLAG_WRITE | paramiko.sftp.SFTP_FLAG_CREATE | paramiko.sftp.SFTP_FLAG_EXCL
        kind, msg = sftp._request(paramiko.sftp.CMD_OPEN, path, flags, attrs)
        if kind != paramiko.sftp.CMD_HANDLE:
            raise paramiko.SFTPError("Expected handle")
        f = paramiko.SFTPFile(sftp, msg.get_binary(), "wb")
        sftp.chmod(path, mode)  # exactly the mode asked for, whatever the server's umask
        return f

    def _atomic_upload(self, path: str, mode: int, what: str, write: Callable[[paramiko.SFTPFile], None]) -> None:
        path = self._abs(path)
        tmps: list[str] = []

        def op(sftp):
            for old in tmps:  # a temp name left by an attempt the dropped connection cut short
                with contextlib.suppress(Exception):
                    sftp.remove(old)
            tmp = self._tmp_name(path)
            tmps.append(tmp)
            try:
                with self._create_new(sftp, tmp, mode) as f:
                    f.set_pipelined(True)
                    write(f)
                sftp.posix_rename(tmp, path)
            except BaseException:
                with contextlib.suppress(Exception):
                    sftp.remove(tmp)
                raise

        self._sftp_call(what, op)

    def put_bytes(self, path: str, data: Union[bytes, str], mode: int = 0o644) -> None:
        """Write a remote file atomically (temp name created with the mode, then rename over)."""
        if isinstance(data, str):
            data = data.encode()
        self._atomic_upload(path, mode, f"writing {path}", lambda f: f.write(data))

    def put_file(self, local: Union[str, os.PathLike], path: str, mode: Optional[int] = None,
                 on_progress: Optional[ProgressCallback] = None) -> None:
        """Upload a file atomically; mode defaults to the local file's permission bits."""
        local = Path(local)
        if mode is None:
            mode = local.stat().st_mode & 0o777
        total = local.stat().st_size

        def write(f):
            done = 0
            with open(local, "rb") as src:
                while True:
                    chunk = src.read(32768)
                    if not chunk:
                        break
                    f.write(chunk)
                    done += len(chunk)
                    if on_progress is not None:
                        on_progress(done, total)
            if on_progress is not None and total == 0:
                on_progress(0, 0)

        self._atomic_upload(path, mode, f"uploading {local.name}", write)

    def get_bytes(self, path: str) -> bytes:
        target = self._abs(path)

        def op(sftp):
            with sftp.open(target, "rb") as f:
                f.prefetch()
                return f.read()

        return self._sftp_call(f"reading {path}", op)

    def get_file(self, path: str, local: Union[str, os.PathLike],
                 on_progress: Optional[ProgressCallback] = None) -> None:
        """Download a file; the local file appears under its name only when complete."""
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        target = self._abs(path)

        def op(sftp):
            tmp = local.with_name(f".{local.name}.labdeploy-{uuid.uuid4().hex[:12]}.part")
            try:
                sftp.get(target, str(tmp), callback=on_progress)
                os.replace(tmp, local)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()

        self._sftp_call(f"downloading {path}", op)

    def get_private(self, path: str, local: Union[str, os.PathLike], *, sha256: Optional[str] = None,
                    on_progress: Optional[ProgressCallback] = None) -> str:
        """Download a file into a 0600 file that appears under its name only when complete and,
        given `sha256`, only when its content has that digest. Returns the digest."""
        import hashlib

        local = Path(local)
        target = self._abs(path)

        class Hashing:
            def __init__(self, f):
                self.f, self.digest = f, hashlib.sha256()

            def write(self, data):
                self.digest.update(data)
                return self.f.write(data)

        def op(sftp):
            tmp = localfiles.temp_name(local)
            try:
                with localfiles.open_private(tmp) as f:
                    out = Hashing(f)
                    sftp.getfo(target, out, callback=on_progress)
                    f.flush()
                    os.fsync(f.fileno())
                got = out.digest.hexdigest()
                if sha256 is not None and got != sha256:
                    raise ChecksumMismatch(f"{path} arrived with the checksum {got[:16]}..., not the "
                                           f"{sha256[:16]}... its manifest records; it was not kept.",
                                           "Pull again; if it fails again the file on the server is damaged "
                                           "(a restore drill will say so too).")
                os.replace(tmp, local)
                return got
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()

        return self._sftp_call(f"downloading {path}", op)
