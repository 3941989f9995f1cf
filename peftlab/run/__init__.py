"""A run from a composed config: the experiment (build, train, resume, evaluate), its folder (every file
name and every write) and its checkpoints (file I/O)."""
