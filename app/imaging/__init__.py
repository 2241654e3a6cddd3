"""Decoding: archives, images, batched loading and the decoded-pixel cache (no use cases)."""
