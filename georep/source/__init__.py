"""Change sources: the tree crawler, plain-tree identity, and (later) brick journals and inotify."""
