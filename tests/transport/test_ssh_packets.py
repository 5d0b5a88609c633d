"""Channel data written in place (`georep.transport.ssh.DataInPlace`) and sealed by
`georep.transport.ssh.GcmDataPackets`, read back by a real sshd.

sshd drops the connection at the first packet whose tag, length, padding or nonce is wrong, so
a stream that arrives whole, across several key exchanges, is the proof that the packets are
the ones RFC 5647 describes.  The key exchanges are forced with asyncssh's ``rekey_bytes``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shlex
from pathlib import Path

import pytest
from conftest import Sshd

from georep.transport import ssh

pytestmark = pytest.mark.ssh


async def _stream(sshd: Sshd, target: Path, pieces: list[bytes], cipher: str, rekey_bytes: int
                  ) -> tuple[int, int, int | None, int]:
    """Write ``pieces`` to ``cat > target`` over one session.

    (packets sent by the fast path, keys, exit status, draws of random bytes for their padding)
    """

    command = f"cat > {shlex.quote(str(target))}"
    client = ssh._PublicKeyFirst(command)
    conn = await ssh.asyncssh.connect(
        "127.0.0.1", sshd.port, username="root", known_hosts=str(sshd.known_hosts),
        client_keys=[str(sshd.identity)], encryption_algs=[cipher], compression_algs=None, config=None,
        rekey_bytes=rekey_bytes, client_factory=lambda: client)
    chan = ssh.SshChannel(conn, await client.process(conn), command)  # writes as the sender's do
    assert chan._data is not None  # (`DataInPlace`)
    for i, piece in enumerate(pieces):
        chan.write(piece)
        if i % 3 == 0:  # several writes queued at times, as frames are
            await chan.drain()
    await chan.close_input()  # EOF behind everything queued
    fast = ssh._DATA_PACKETS.get(conn)
    status = await chan.wait()
    return (fast.sent, fast.keys, status, fast.draws) if fast else (0, 0, status, 0)


def _pieces(total: int) -> list[bytes]:
    """Random pieces of every size around a packet's (32 KiB), ``total`` bytes or a little more."""

    sizes = [1, 15, 16, 17, 32_767, 32_768, 32_769, 65_536 + 3, 1 << 20]
    pieces: list[bytes] = []
    while sum(map(len, pieces)) < total:
        pieces.append(os.urandom(sizes[len(pieces) % len(sizes)]))
    return pieces


def test_data_packets_survive_key_exchanges(sshd: Sshd, tmp_path: Path) -> None:
    """8 MiB in pieces of every size around the packet's, with a key exchange every 256 KiB."""

    assert ssh.GCM_DATA_PACKETS  # the path is taken with this asyncssh
    pieces = _pieces(8 << 20)
    total = sum(map(len, pieces))
    target = tmp_path / "received"
    sent, keys, status, draws = asyncio.run(_stream(sshd, target, pieces, "aes128-gcm@openssh.com", 256 * 1024))
    assert status == 0
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(b"".join(pieces)).digest()
    assert sent >= total // 32_768  # (sshd's packets are 32 KiB at most)
    assert keys >= 20  # new keys after each exchange were taken up
    # padding (4-19 bytes a packet) comes from random bytes drawn ahead, not a system call a packet
    assert 1 <= draws <= sent * 19 // ssh.GcmDataPackets.RANDOM_AHEAD + 1


@pytest.mark.parametrize("cipher", ["aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com", "aes128-ctr"])
def test_other_ciphers_go_through_asyncssh(sshd: Sshd, tmp_path: Path, cipher: str) -> None:
    """AES-256-GCM takes the path too; ChaCha20-Poly1305 and CTR are left to asyncssh."""

    data = os.urandom(3 << 20)
    target = tmp_path / "received"
    sent, keys, status, _ = asyncio.run(_stream(sshd, target, [data], cipher, 1 << 30))
    assert status == 0 and target.read_bytes() == data
    if cipher.startswith("aes256-gcm"):
        assert sent >= len(data) // 32_768 and keys == 1
    else:
        assert sent == 0 and keys == 0


async def _lane(sshd: Sshd, sock: Path, pieces: list[bytes], rekey_bytes: int) -> tuple[bytes, int, bool]:
    """Write ``pieces`` down a data lane (a ``direct-streamlocal`` channel) into a Unix socket served here.

    (what the socket received, packets sent by the fast path, whether the lane wrote through `DataInPlace`)
    """

    received = bytearray()
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1 << 20):
            received.extend(data)
        writer.close()
        done.set()

    server = await asyncio.start_unix_server(serve, path=str(sock))
    command = "cat > /dev/null"
    client = ssh._PublicKeyFirst(command)
    conn = await ssh.asyncssh.connect(
        "127.0.0.1", sshd.port, username="root", known_hosts=str(sshd.known_hosts),
        client_keys=[str(sshd.identity)], encryption_algs=["aes128-gcm@openssh.com"], compression_algs=None,
        config=None, rekey_bytes=rekey_bytes, client_factory=lambda: client)
    chan = ssh.SshChannel(conn, await client.process(conn), command)
    lane = await chan.join(os.fsencode(sock))
    in_place = isinstance(getattr(lane._writer.channel._flush_send_buf, "__self__", None), ssh.DataInPlace)
    for i, piece in enumerate(pieces):
        lane.write(piece)
        if i % 3 == 0:
            await lane.drain()
    await lane.drain()
    await lane.close_input()
    await asyncio.wait_for(done.wait(), 30)
    fast = ssh._DATA_PACKETS[conn]
    await chan.close_input()
    await chan.wait()
    server.close()
    return bytes(received), fast.sent, in_place


def test_a_data_lane_writes_in_place_too(sshd: Sshd, tmp_path: Path) -> None:
    """A lane's channel sends as the session's does: 8 MiB in pieces of every size, across key exchanges."""

    pieces = _pieces(8 << 20)
    total = sum(map(len, pieces))
    received, sent, in_place = asyncio.run(_lane(sshd, tmp_path / "lane.sock", pieces, 512 * 1024))
    assert in_place
    assert hashlib.sha256(received).digest() == hashlib.sha256(b"".join(pieces)).digest()
    assert sent >= total // 32_768
