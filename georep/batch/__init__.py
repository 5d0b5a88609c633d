"""The batch stage: source changes in, coalesced and ordered operations for the secondary out."""
