"""georep-sync: geo-replication of GlusterFS bricks and plain trees over one SSH connection.

Data flows source → batch → transport → apply; the sub-packages are named for those stages.
"""

__version__ = "0.1.0"

#: Wire protocol version spoken by this release (docs/PROTOCOL.md).
PROTOCOL_VERSION = 7
