"""Apply stage: the agent, its index of ids, and the only code that mutates the secondary."""
