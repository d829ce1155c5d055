"""Zero-shot evaluation: the 29 + 2 task registry, task folders, the image cache, CLIP_benchmark-identical metrics."""
