"""Tasks: where the data comes from, how it is batched, and how predictions are scored."""
