"""Data in the real formats: the synthetic world and its generator, the NIGHTS reader."""
