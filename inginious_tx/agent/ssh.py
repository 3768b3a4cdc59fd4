"""SSH debug: a shell inside a running job's sandbox, over one Twisted Conch server per agent.

A job with ``debug="ssh"`` gets a one-time password (and a user name,
``worker`` unless the job names one).  As soon as the agent backend says the
job's sandbox is up (:meth:`ISSHDebugBackend.debug_sandbox`), the agent sends
``AgentJobSSHDebug(job_id, host, port, password)``; with those credentials,
``ssh -p PORT worker@HOST`` gets a shell inside that job's sandbox: ``docker
exec`` in its container (the Docker agent) or a shell in its job folder as
its user (the local agent).  Nothing else is offered: no port forwarding, no
subsystem (sftp), no agent forwarding, no environment requests.

Rules:

- the password is 24 random bytes (URL-safe base64), valid only while that
  job runs; a wrong user or password, or a job that has ended, is refused;
- every session (and the processes it started in the sandbox) ends when the
  job ends; the job's result is sent as usual, once;
- the job's limits apply as always; an ssh job's wall-clock limit is its
  ``hard_time_limit`` (or 3 x ``time_limit``) capped at ``max_time``
  (``--ssh-max-time``, 1800 s by default), so a forgotten debug job ends;
- the server's host key (Ed25519) is made once in ``keys_dir``
  (``--ssh-keys``) and kept, so clients can pin it.

Docker sessions run the ``docker`` command (the engine's CLI) on the agent's
host, with the agent's ``docker_url``: it must be installed there.
"""

from __future__ import annotations

import fcntl
import hmac
import os
import secrets
import signal
import struct
import termios
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from twisted.application.service import Service
from twisted.conch.avatar import ConchUser
from twisted.conch.interfaces import IConchUser, ISession
from twisted.conch.ssh import connection, keys, session, userauth
from twisted.conch.ssh import factory as ssh_factory
from twisted.conch.ssh.transport import SSHServerTransport
from twisted.cred import credentials
from twisted.cred import error as cred_error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.components import registerAdapter
from twisted.python.failure import Failure
from zope.interface import implementer

from .._reactor import CommonReactor
from ..messages import BackendJobId, BackendNewJob
from .debug import IDebugSandbox, ISSHDebugBackend, ShellCommand

__all__ = [
    "ISSHDebugBackend",
    "IDebugSandbox",
    "ShellCommand",
    "SSHDebugServer",
    "DEFAULT_USER",
    "DEFAULT_MAX_TIME",
    "load_host_key",
]

#: The user name an ssh job gets when its message names none (INGInious' choice).
DEFAULT_USER = "worker"
#: The longest wall-clock time an ssh job may run, in seconds, unless configured.
DEFAULT_MAX_TIME = 1800
_KEY_FILE = "ssh_host_ed25519_key"
#: Shells and commands open at once on one job.
MAX_SESSIONS = 8
#: Open SSH connections at once (``--ssh-max-connections``): more are closed as they come.
DEFAULT_MAX_CONNECTIONS = 64
#: Of those, connections not logged in yet (``--ssh-max-unauthenticated``).
DEFAULT_MAX_UNAUTHENTICATED = 16
#: Seconds a connection has to log in before it is closed (``--ssh-login-timeout``).
DEFAULT_LOGIN_TIMEOUT = 20.0


def load_host_key(keys_dir: str) -> keys.Key:
    """The server's Ed25519 host key from ``keys_dir``, made (mode 0600) on first use (blocking)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    os.makedirs(keys_dir, mode=0o700, exist_ok=True)
    path = os.path.join(keys_dir, _KEY_FILE)
    if not os.path.exists(path):
        data = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        with open(path + ".pub", "wb") as f:
            f.write(keys.Key.fromString(data).public().toString("OPENSSH") + b"\n")
    with open(path, "rb") as f:
        return keys.Key.fromString(f.read())


@dataclass(eq=False)
class _DebugJob:
    """A job open to SSH sessions."""

    job_id: BackendJobId
    user: str
    password: str
    sandbox: Optional[Any] = None
    ended: bool = False
    sessions: List[_Session] = field(default_factory=list)


@implementer(ICredentialsChecker)
class _JobChecker:
    """User and one-time password of a running ssh job -> that job."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, server: SSHDebugServer) -> None:
        self._server = server

    def requestAvatarId(self, creds: Any) -> defer.Deferred:
        job = self._server._match(creds.username, creds.password)
        if job is None:
            return defer.fail(cred_error.UnauthorizedLogin("wrong user or password, or the job has ended"))
        return defer.succeed(job)


class _JobUser(ConchUser):
    """What a logged-in user may do: open session channels on its job, nothing else."""

    def __init__(self, server: SSHDebugServer, job: _DebugJob) -> None:
        super().__init__()
        self.server = server
        self.job = job
        self.channelLookup[b"session"] = session.SSHSession

    def logout(self) -> None:
        for s in list(self.job.sessions):
            if s.avatar is self:
                s.closed()


@implementer(IRealm)
class _Realm:
    def __init__(self, server: SSHDebugServer) -> None:
        self._server = server

    def requestAvatar(self, avatar_id: Any, mind: Any, *interfaces: Any) -> Tuple[Any, Any, Callable[[], None]]:
        if IConchUser not in interfaces:
            raise NotImplementedError("only SSH users")
        user = _JobUser(self._server, avatar_id)
        return IConchUser, user, user.logout


@implementer(ISession)
class _Session:
    """One session channel: a shell or a command inside the job's sandbox."""

    log = Logger()

    def __init__(self, avatar: _JobUser) -> None:
        self.avatar = avatar
        self.pty: Optional[Tuple[bytes, Tuple[int, int, int, int]]] = None
        self.process: Any = None

    def getPty(self, term: bytes, windowSize: Tuple[int, int, int, int], modes: Any) -> None:
        self.pty = (term, windowSize)

    def openShell(self, proto: Any) -> None:
        self._spawn(None, proto)

    def execCommand(self, proto: Any, command: bytes) -> None:
        self._spawn(command.decode("utf-8", "replace"), proto)

    def _spawn(self, command: Optional[str], proto: Any) -> None:
        job = self.avatar.job
        if job.ended or job.sandbox is None:
            raise RuntimeError("the job has ended")
        if len(job.sessions) >= MAX_SESSIONS:
            raise RuntimeError(f"at most {MAX_SESSIONS} sessions at once per job")
        term = self.pty[0].decode("ascii", "replace") if self.pty else "dumb"
        spec: ShellCommand = job.sandbox.command(command, self.pty is not None, term)
        self.process = self.avatar.server._reactor.spawnProcess(
            proto,
            spec.argv[0],
            spec.argv,
            env=spec.env,
            path=spec.path,
            uid=spec.uid,
            gid=spec.gid,
            usePTY=self.pty is not None,
        )
        job.sessions.append(self)
        if self.pty is not None:
            self.windowChanged(self.pty[1])
        self.avatar.server.log.info(
            "ssh debug session on job {job_id!r}: {what}", job_id=job.job_id, what=command or "shell"
        )

    def windowChanged(self, newWindowSize: Tuple[int, int, int, int]) -> None:
        if self.process is None or self.pty is None:
            if self.pty is not None:
                self.pty = (self.pty[0], newWindowSize)
            return
        rows, cols, xpixel, ypixel = newWindowSize
        try:
            fcntl.ioctl(self.process.fileno(), termios.TIOCSWINSZ, struct.pack("4H", rows, cols, xpixel, ypixel))
        except (OSError, AttributeError):
            pass

    def eofReceived(self) -> None:
        if self.process is not None:
            try:
                self.process.closeStdin()
            except Exception:
                pass

    def closed(self) -> None:
        """The channel closed, or the job ended: end what the session started."""
        job = self.avatar.job
        if self in job.sessions:
            job.sessions.remove(self)
        process, self.process = self.process, None
        if process is None:
            return
        pid = getattr(process, "pid", None)
        try:
            # a session with a terminal leads its own process group: end all of it
            if pid and os.getpgid(pid) == pid and pid != os.getpgid(0):
                os.killpg(pid, signal.SIGKILL)
            else:
                process.signalProcess("KILL")
        except (ProcessExitedAlready, OSError):
            pass


registerAdapter(_Session, _JobUser, ISession)


class _Transport(SSHServerTransport):
    """A server connection that counts in its factory's caps and must log in in time."""

    factory: _Factory
    authenticated = False
    _deadline: Optional[IDelayedCall] = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._deadline = self.factory.clock.callLater(self.factory.login_timeout, self._too_slow)

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.authenticated and self.transport is not None:
            abort = getattr(self.transport, "abortConnection", self.transport.loseConnection)
            abort()

    def setService(self, service: Any) -> None:
        # the userauth service hands over to ssh-connection once the login succeeded
        if service.name == b"ssh-connection" and not self.authenticated:
            self.authenticated = True
            self.factory.unauthenticated.discard(self)
            if self._deadline is not None and self._deadline.active():
                self._deadline.cancel()
            self._deadline = None
        super().setService(service)

    def connectionLost(self, reason: Optional[Failure] = connectionDone) -> None:
        self.factory.open.discard(self)
        self.factory.unauthenticated.discard(self)
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        super().connectionLost(reason)


class _Factory(ssh_factory.SSHFactory):
    protocol = _Transport
    log = Logger()

    def __init__(
        self, host_key: keys.Key, clock: IReactorTime, max_connections: int, max_unauthenticated: int,
        login_timeout: float,
    ) -> None:  # fmt: skip
        self._key = host_key
        self.publicKeys = {host_key.sshType(): host_key.public()}
        self.privateKeys = {host_key.sshType(): host_key}
        self.services = {b"ssh-userauth": userauth.SSHUserAuthServer, b"ssh-connection": connection.SSHConnection}
        self.clock = clock
        self.max_connections = max_connections
        self.max_unauthenticated = max_unauthenticated
        self.login_timeout = login_timeout
        self.open: Set[_Transport] = set()
        self.unauthenticated: Set[_Transport] = set()
        self._refused = 0

    def buildProtocol(self, addr: Any) -> Optional[_Transport]:  # type: ignore[override]
        """None (Twisted closes the socket at once) beyond the caps, else a counted connection."""
        if len(self.open) >= self.max_connections or len(self.unauthenticated) >= self.max_unauthenticated:
            self._refused += 1
            if self._refused in (1, 10, 100) or self._refused % 1000 == 0:
                self.log.warn(
                    "ssh debug server: connection refused, {open} open ({unauth} not logged in); "
                    "{n} refused so far",
                    open=len(self.open), unauth=len(self.unauthenticated), n=self._refused,
                )  # fmt: skip
            return None
        proto = super().buildProtocol(addr)
        assert isinstance(proto, _Transport)
        self.open.add(proto)
        self.unauthenticated.add(proto)
        return proto

    def getPrimes(self) -> None:
        return None


class SSHDebugServer(Service):
    """The agent's SSH server for ``debug="ssh"`` jobs (see the module docstring).

    ``port``: where it listens (0: a free port, see :attr:`port`);
    ``interface``: the address it listens on; ``host``: the address sent to
    clients (default: ``interface``, or this machine's name when that is
    ``0.0.0.0``); ``keys_dir``: where the host key lives; ``max_time``: the
    longest wall-clock time of an ssh job; ``max_connections``: open
    connections at once, ``max_unauthenticated``: of those, not logged in yet
    (beyond either, a new connection is closed at once, so a flood cannot
    take the agent's file descriptors); ``login_timeout``: seconds a
    connection has to log in.
    """

    log = Logger()

    def __init__(
        self,
        reactor: CommonReactor,
        keys_dir: str,
        port: int = 0,
        interface: str = "127.0.0.1",
        host: Optional[str] = None,
        max_time: float = DEFAULT_MAX_TIME,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_unauthenticated: int = DEFAULT_MAX_UNAUTHENTICATED,
        login_timeout: float = DEFAULT_LOGIN_TIMEOUT,
    ) -> None:
        if max_connections < 1 or max_unauthenticated < 1 or login_timeout <= 0:
            raise ValueError("the ssh connection caps are at least 1 and the login timeout positive")
        self._reactor = reactor
        self.keys_dir = keys_dir
        self._port_number = port
        self.interface = interface
        if host is None:
            import socket

            host = socket.getfqdn() if interface in ("0.0.0.0", "::", "") else interface
        self.host = host
        self.max_time = max_time
        self.max_connections = max_connections
        self.max_unauthenticated = min(max_unauthenticated, max_connections)
        self.login_timeout = login_timeout
        self._factory: Optional[_Factory] = None
        self._listening: Any = None
        self._jobs: Dict[Tuple[bytes, str], _DebugJob] = {}

    @property
    def port(self) -> int:
        """The port it listens on (once started)."""
        if self._listening is not None:
            return int(self._listening.getHost().port)
        return self._port_number

    def startService(self) -> None:
        super().startService()
        factory = _Factory(
            load_host_key(self.keys_dir), self._reactor, self.max_connections, self.max_unauthenticated,
            self.login_timeout,
        )  # fmt: skip
        self._factory = factory
        portal = Portal(_Realm(self), [_JobChecker(self)])
        factory.portal = portal  # type: ignore[attr-defined]
        # An SSHFactory is a Factory, which listenTCP takes; Twisted's annotation asks for a ServerFactory.
        self._listening = self._reactor.listenTCP(self._port_number, factory, interface=self.interface)  # type: ignore[arg-type]
        self.log.info(
            "ssh debug server on {interface}:{port}, announced as {host}",
            interface=self.interface,
            port=self.port,
            host=self.host,
        )

    def stopService(self) -> Any:
        super().stopService()
        for key in list(self._jobs):
            self._end(key)
        listening, self._listening = self._listening, None
        if self._factory is not None:
            for conn in list(self._factory.open):
                if conn.transport is not None:
                    conn.transport.loseConnection()
        if listening is not None:
            return listening.stopListening()
        return None

    def connections(self) -> Tuple[int, int]:
        """(open connections, of which not logged in yet)."""
        if self._factory is None:
            return 0, 0
        return len(self._factory.open), len(self._factory.unauthenticated)

    # -- jobs -----------------------------------------------------------------

    def bounded(self, message: BackendNewJob) -> BackendNewJob:
        """``message`` with its wall-clock limit capped at :attr:`max_time`."""
        hard = message.hard_time_limit if message.hard_time_limit and message.hard_time_limit > 0 else 0
        if not hard:
            hard = 3 * max(int(message.time_limit), 0) or int(self.max_time)
        return _with_hard_limit(message, int(min(hard, self.max_time)))

    def watch(self, message: BackendNewJob, backend: Any, send: Callable[[Any], None]) -> None:
        """Open ``message``'s job to sessions once its sandbox is up, and announce it with ``send``."""
        from ..messages import AgentJobSSHDebug

        key = (bytes(message.job_id[0]), str(message.job_id[1]))
        user = str(getattr(message, "ssh_user", None) or DEFAULT_USER)
        job = _DebugJob(message.job_id, user, secrets.token_urlsafe(24))
        self._jobs[key] = job
        d = defer.maybeDeferred(backend.debug_sandbox, message.job_id)

        def up(sandbox: Any) -> None:
            if job.ended or sandbox is None:
                return
            job.sandbox = sandbox
            send(AgentJobSSHDebug(message.job_id, self.host, self.port, job.password))

        d.addCallback(up)
        d.addErrback(
            lambda f: self.log.failure("ssh debug: job {job_id!r} cannot be debugged", f, job_id=message.job_id)
        )

    def job_ended(self, job_id: BackendJobId) -> None:
        """Refuse new sessions and end the open ones."""
        self._end((bytes(job_id[0]), str(job_id[1])))

    def _end(self, key: Tuple[bytes, str]) -> None:
        job = self._jobs.pop(key, None)
        if job is None:
            return
        job.ended = True
        for s in list(job.sessions):
            s.closed()

    def _match(self, username: bytes, password: bytes) -> Optional[_DebugJob]:
        """The running job these credentials open, or None (compared in constant time)."""
        found = None
        for job in self._jobs.values():
            ok_pw = hmac.compare_digest(password, job.password.encode())
            ok_user = hmac.compare_digest(username, job.user.encode())
            if ok_pw and ok_user and job.sandbox is not None and not job.ended:
                found = job
        return found


def _with_hard_limit(message: BackendNewJob, hard: int) -> BackendNewJob:
    """A copy of ``message`` with another ``hard_time_limit``."""
    cls: Any = type(message)
    values = {name: getattr(message, name) for name in cls.fields}
    values["hard_time_limit"] = hard
    return cls(**values)
