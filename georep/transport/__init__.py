"""Moving protocol bytes: a narrow `Channel` with a pipe and an SSH implementation, and the sender."""
