"""MEST: memory-economic sparse training (models, schemes, schedules, trainer, compile command)."""
