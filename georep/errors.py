"""Every error a user can meet, with its one-line cause, a hint and a stable exit code.

Exit codes are decided here and nowhere else: the CLI's top-level handler maps a
`GeorepError` to ``exc.exit_code``.  `docs/ERRORS.md` is generated from these classes
(``python -m georep.errors > docs/ERRORS.md``) and a test checks it is current.

Per-path problems (a file that vanished, a name the secondary refuses) are *values*
(`georep.model.Problem`) collected next to results; an exception means the session
itself cannot go on.

Each class sets:
- ``exit_code``: stable, documented, never reused for another meaning;
- ``hint``: what the operator should do about it (may use ``{placeholders}`` filled
  from the keyword arguments given to the constructor).
The message passed to the constructor is the one-line cause.
"""

from __future__ import annotations

from typing import ClassVar


class GeorepError(Exception):
    """Something stops georep-sync; the message says what and the hint says how to fix it."""

    exit_code: ClassVar[int] = 1
    hint: ClassVar[str] = "run again with --debug for details"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self._hint = hint

    @property
    def hint_text(self) -> str:
        return self._hint if self._hint is not None else type(self).hint

    def __str__(self) -> str:
        return self.message


# -- usage and source ---------------------------------------------------------------


class UsageError(GeorepError):
    """The command line is not valid."""

    exit_code = 2
    hint = "see 'georep-sync --help'"


class SourceMissing(GeorepError):
    """SOURCE does not exist or is not a directory."""

    exit_code = 3
    hint = "check the path; a brick root must be given as its real directory"


class SourceLooksUnmounted(GeorepError):
    """SOURCE looks unmounted or empty while the secondary holds data: refusing mass deletes."""

    exit_code = 4
    hint = "mount the source (or pass --allow-mass-delete if emptying the secondary is really intended)"


class StateError(GeorepError):
    """The source-side state directory cannot be used."""

    exit_code = 5
    hint = "check --state-dir is writable and on a local filesystem"

    @classmethod
    def during_run(cls, state_dir: object, exc: BaseException) -> StateError:
        """The state directory failed mid-run (SQLite's error ``exc``); a full disk gets a hint of its own.

        What the secondary was sent stays there either way: the state only lets the next
        run skip what is unchanged, and a run that could not record it compares again.
        """

        cause = str(exc) or type(exc).__name__
        if "full" in cause:  # SQLITE_FULL: "database or disk is full"
            return cls(f"the state directory {state_dir} is full ({cause})",
                       hint="free space there or give another --state-dir, then run again; what reached the "
                            "secondary stays there")
        return cls(f"the state directory {state_dir} failed during the run ({cause})")


class ChangelogFormatError(GeorepError):
    """A GlusterFS changelog journal cannot be parsed."""

    exit_code = 6
    hint = "the journal is corrupt or of an unknown version; keep a copy and report it"


class NotABrick(GeorepError):
    """SOURCE is not a GlusterFS brick root (no trusted.glusterfs.volume-id)."""

    exit_code = 7
    hint = "give the brick directory itself (gluster volume info lists it), as root on the brick's server"


class ChangelogsOff(GeorepError):
    """The brick keeps no changelog journals."""

    exit_code = 8
    hint = "enable them: gluster volume set VOLUME changelog.changelog on"


class DaemonRunning(GeorepError):
    """Another run (a daemon, or a --oneshot) already serves this source and secondary with this state."""

    exit_code = 9
    hint = "stop the other run first (see 'georep-sync status' for daemons), or use another --state-dir"


# -- secondary / transport ---------------------------------------------------------


class SecondaryNotWritable(GeorepError):
    """The secondary ROOT cannot be created or written."""

    exit_code = 10
    hint = "check the path and permissions on the secondary"


class DiskFull(GeorepError):
    """The secondary filesystem is full."""

    exit_code = 11
    hint = "free space on the secondary (df -h), then run again: nothing partial was published"


class RootNotAllowed(GeorepError):
    """The agent is restricted (--allow) and the requested root is outside what it may write."""

    exit_code = 12
    hint = "use a path under the one the secondary's authorized_keys allows, or ask its admin to allow yours"


class SshUnreachable(GeorepError):
    """The SSH server of the secondary cannot be reached."""

    exit_code = 20
    hint = "check host, port and network; try 'ssh -p PORT user@host true'"


class SshAuthFailed(GeorepError):
    """The SSH server refused every identity offered."""

    exit_code = 21
    hint = "add your public key to the secondary's authorized_keys, or pass --identity"


class HostKeyUnknown(GeorepError):
    """The secondary's SSH host key is not in known_hosts."""

    exit_code = 22
    hint = "verify the fingerprint, then accept it: ssh-keyscan -p PORT HOST >> ~/.ssh/known_hosts"


class HostKeyChanged(GeorepError):
    """The secondary's SSH host key differs from the one in known_hosts."""

    exit_code = 23
    hint = "if the host was reinstalled, remove the old key: ssh-keygen -R '[HOST]:PORT'"


class AgentNotFound(GeorepError):
    """The remote shell could not find the georep-sync agent (exit 127)."""

    exit_code = 24
    hint = "install georep-sync on the secondary or pass --remote-command /path/to/georep-sync"


class AgentVersionMismatch(GeorepError):
    """The agent speaks another protocol version."""

    exit_code = 25
    hint = "install the same georep-sync release on both sides"


class AgentFailed(GeorepError):
    """The agent stopped or answered something that is not the protocol."""

    exit_code = 26
    hint = "run again with --debug; the agent's stderr is shown above"


class ConnectionLost(GeorepError):
    """The connection to the secondary dropped mid-session."""

    exit_code = 27
    hint = "run again: acknowledged work is kept and only the rest is sent"


class ProtocolError(GeorepError):
    """A peer sent bytes that break the wire protocol (bad magic, frame or message)."""

    exit_code = 28
    hint = "both ends must be georep-sync; check nothing prints to stdout in the remote shell's rc files"


class SyncIncomplete(GeorepError):
    """Some entries could not be replicated; the rest was."""

    exit_code = 30
    hint = "see the listed paths and causes; run again once they are fixed"


def all_error_classes() -> list[type[GeorepError]]:
    """Every concrete error class, ordered by exit code (for the docs table)."""

    found: list[type[GeorepError]] = []
    stack: list[type[GeorepError]] = [GeorepError]
    while stack:
        cls = stack.pop()
        found.append(cls)
        stack.extend(cls.__subclasses__())
    return sorted(set(found), key=lambda c: (c.exit_code, c.__name__))


def error_table_markdown() -> str:
    """The documented exit-code table, generated from the classes."""

    lines = [
        "# Errors and exit codes",
        "",
        "Generated by `python -m georep.errors`; do not edit by hand.",
        "",
        "| exit | error | meaning | what to do |",
        "| --- | --- | --- | --- |",
        "| 0 | — | the secondary equals the source | — |",
    ]
    for cls in all_error_classes():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        lines.append(f"| {cls.exit_code} | `{cls.__name__}` | {doc} | {cls.hint} |")
    lines.append(
        "| 70 | — | an internal error (a bug): one line, traceback with --debug | report it with the --debug output |"
    )
    lines.append("| 130 | — | interrupted (Ctrl-C) | run again: acknowledged work is kept |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(error_table_markdown(), end="")
