"""What keeps a run trustworthy around the training loop: a locked directory, threads, matmul precision, clean stops."""
