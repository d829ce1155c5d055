"""The study: its file, its expansion into jobs, what to run next, its data paths. Pure, apart from reading data."""
