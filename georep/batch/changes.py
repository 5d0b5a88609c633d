"""What happened on the source (changes) and what the secondary must do (operations).

Both are addressed by object id (the 16-byte gfid), never by path: a path is only true
at one instant, an id for the object's whole life.  That is what lets the batcher
coalesce freely ("renames move names, never data") and lets the secondary replay a
batch idempotently.  The exact meaning of every operation is written down in
`georep.batch.coalesce` (the agent implements the same semantics on a real filesystem).

Changes are the journal's vocabulary, already converted from GlusterFS records by
`journal_record_to_changes` / `JournalConverter` (the only code here that knows about
GlusterFS).  Names are raw bytes; kinds are `georep.model.Kind`, or None when unknown.
"""

from __future__ import annotations

from typing import Final

from georep.model import ROOT_ID, Kind, record
from georep.source.changelog import DataRecord, EntryRecord, Fop, MetaRecord, Record

#: Pseudo parent id of the secondary's staging directory (the all-ones gfid,
#: which the journal parser refuses, so no real object can have it).  Operations move
#: objects there to break swaps and cycles, and to take removed directories out of the
#: way; the agent empties it at the end of every batch.  Same value as
#: ``georep.apply.index.STAGING_ID``.
STAGING: Final = b"\xff" * 16

NameKey = tuple[bytes, bytes]  # (parent id, name)

# -- changes (input) ------------------------------------------------------------------


@record
class Create:
    """A new object got its first name (CREATE, MKDIR, MKNOD, SYMLINK)."""

    id: bytes
    parent: bytes
    name: bytes
    kind: Kind | None  # None: unknown (treated like a directory for ordering)


@record
class Link:
    """An existing non-directory got one more name (LINK)."""

    id: bytes
    parent: bytes
    name: bytes


@record
class Rename:
    """A name moved (RENAME); whatever held the new name lost it (no UNLINK is journalled)."""

    id: bytes
    old_parent: bytes
    old_name: bytes
    new_parent: bytes
    new_name: bytes
    #: the object's kind if the source knows it (journals do not say; a brick reader can
    #: tell a directory by its handle).  A directory's rename coalesces better: a
    #: non-directory may be a hard link of the target, which makes the rename a no-op.
    kind: Kind | None = None


@record
class Unlink:
    """A non-directory lost one name (UNLINK); it is gone when it has no name left."""

    id: bytes
    parent: bytes
    name: bytes


@record
class Rmdir:
    """A directory was removed (RMDIR)."""

    id: bytes
    parent: bytes
    name: bytes


@record
class Data:
    """The object's content changed.  ``size``: a hint for batching by bytes, if known."""

    id: bytes
    size: int | None = None


@record
class Meta:
    """The object's metadata changed (mode, owner, times, xattrs); read at sync time."""

    id: bytes


Change = Create | Link | Rename | Unlink | Rmdir | Data | Meta

# -- operations (output) --------------------------------------------------------------


@record
class Make:
    """Make object ``id`` exist, as a new object named ``parent/name`` (see coalesce.py)."""

    id: bytes
    parent: bytes
    name: bytes
    kind: Kind | None


@record
class AddLink:
    """Give existing non-directory ``id`` the extra name ``parent/name``."""

    id: bytes
    parent: bytes
    name: bytes


@record
class Move:
    """Rename ``id`` from ``old_parent/old_name`` to ``new_parent/new_name``."""

    id: bytes
    old_parent: bytes
    old_name: bytes
    new_parent: bytes
    new_name: bytes


@record
class Remove:
    """Take name ``parent/name`` away from ``id`` (set aside in staging until the batch ends)."""

    id: bytes
    parent: bytes
    name: bytes


@record
class Clear:
    """Set aside whatever holds ``parent/name``: a rename replaced it, then was coalesced away."""

    parent: bytes
    name: bytes


@record
class SyncData:
    """Copy ``id``'s content as the source has it when the operation is sent."""

    id: bytes
    size: int | None = None  # the last size hint seen, for accounting only


@record
class SyncMeta:
    """Copy ``id``'s metadata as the source has it when the operation is sent."""

    id: bytes


Op = Make | AddLink | Move | Remove | Clear | SyncData | SyncMeta

# -- from GlusterFS journal records ---------------------------------------------------

#: Names GlusterFS keeps at the brick root for itself; clients never see them.
_INTERNAL_ROOT_NAMES = (b".glusterfs", b".trashcan")
_AFR_ANON_PREFIX = b".glusterfs-anonymous-inode-"


def is_internal_name(parent: bytes, name: bytes) -> bool:
    """Whether ``parent/name`` is GlusterFS's own (AFR's anonymous-inode dir, .glusterfs, .trashcan)."""

    return parent == ROOT_ID and (name in _INTERNAL_ROOT_NAMES or name.startswith(_AFR_ANON_PREFIX))


def _create_kind(rec: EntryRecord) -> Kind:
    if rec.fop is Fop.MKDIR:
        return Kind.DIR
    if rec.fop is Fop.SYMLINK:
        return Kind.SYMLINK
    if rec.fop is Fop.MKNOD and rec.mode is not None:
        # mknod with no file type bits makes a regular file
        return Kind.from_mode(rec.mode) or Kind.FILE
    return Kind.FILE


class JournalConverter:
    """Journal records → changes, hiding GlusterFS's internal directories and what is inside them.

    Stateful only to remember the ids of hidden directories (a replica brick journals
    the MKDIR of AFR's ``.glusterfs-anonymous-inode-<uuid>``, then entries inside it).
    An object renamed out of a hidden directory appears as a `Create` of unknown kind
    (whatever it holds below must be found by a crawl); one renamed into it disappears
    as an `Unlink` (the secondary's `Remove` handles directories too).
    """

    def __init__(self) -> None:
        self.hidden: set[bytes] = set()

    def _hidden(self, parent: bytes, name: bytes) -> bool:
        return parent in self.hidden or is_internal_name(parent, name)

    def convert(self, rec: Record) -> list[Change]:
        """The changes one record stands for (possibly none)."""

        if isinstance(rec, DataRecord):
            return [] if rec.gfid in self.hidden else [Data(rec.gfid)]
        if isinstance(rec, MetaRecord):
            return [] if rec.gfid in self.hidden else [Meta(rec.gfid)]
        fop = rec.fop
        if fop is Fop.RENAME:
            assert rec.new_pargfid is not None and rec.new_name is not None
            old_hidden = self._hidden(rec.pargfid, rec.name)
            new_hidden = self._hidden(rec.new_pargfid, rec.new_name)
            if old_hidden and new_hidden:
                return []
            if old_hidden:
                self.hidden.discard(rec.gfid)
                return [Create(rec.gfid, rec.new_pargfid, rec.new_name, None)]
            if new_hidden:
                return [Unlink(rec.gfid, rec.pargfid, rec.name)]
            return [Rename(rec.gfid, rec.pargfid, rec.name, rec.new_pargfid, rec.new_name)]
        if self._hidden(rec.pargfid, rec.name):
            if fop is Fop.MKDIR and rec.gfid != ROOT_ID:
                self.hidden.add(rec.gfid)
            return []
        if fop is Fop.LINK:
            return [Link(rec.gfid, rec.pargfid, rec.name)]
        if fop is Fop.UNLINK:
            return [Unlink(rec.gfid, rec.pargfid, rec.name)]
        if fop is Fop.RMDIR:
            return [Rmdir(rec.gfid, rec.pargfid, rec.name)]
        return [Create(rec.gfid, rec.pargfid, rec.name, _create_kind(rec))]


def journal_record_to_changes(rec: Record) -> list[Change]:
    """Stateless conversion of one record (hides internal names at the root, not their content).

    Prefer one `JournalConverter` per brick stream: it also hides entries inside
    GlusterFS's internal directories.
    """

    return JournalConverter().convert(rec)
