"""The in-job side: the entry point every executor starts, one rank, the node launcher, the SLURM task."""
