"""What keeps one run trustworthy around the training loop: a locked run directory, CPU threads, clean stops."""
