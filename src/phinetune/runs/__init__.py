"""The run folder: its file names, loading what it holds (base and tuned), its held-out prompts."""
