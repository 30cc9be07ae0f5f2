"""`phinetune synth`: grow a small seed set into multi-turn conversations with a teacher model, resumably.

Pipeline (one module each): config -> stages (which teacher calls to make) -> the teachers (teachers/: a local HF
model or an OpenAI-compatible endpoint, and the journal where every answer is appended and fsynced as it arrives)
-> clean (filters + near-duplicate removal) -> run (orchestration, progress, output, stats).
"""
