"""The one training loop shared by every method, and what it records."""
