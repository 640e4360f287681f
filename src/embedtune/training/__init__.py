"""Training: the loop (trainer) and exact-resume checkpoints."""
