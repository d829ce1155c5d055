"""Training inside a job: stage 1 (NIGHTS 2AFC) and stage 2 (CLIP contrastive), data order, resume state."""
