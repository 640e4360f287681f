"""Data: table readers, NLI training triplets, and the STS evaluation tasks."""
