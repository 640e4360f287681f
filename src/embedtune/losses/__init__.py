"""Contrastive losses: InfoNCE and its cached (GradCache) variant, sharing compute_loss_from_embeddings."""
from embedtune.losses.infonce import InfoNCELoss, compute_loss_from_embeddings  # noqa: F401
