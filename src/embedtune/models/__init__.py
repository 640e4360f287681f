"""Models: where weights come from (loading) and how texts become vectors (embedder)."""
