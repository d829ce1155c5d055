"""The submit side: job files, the local executor (the embedded default) and SLURM through submitit."""
