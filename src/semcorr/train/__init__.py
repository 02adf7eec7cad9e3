"""Training: losses, data for training and trainers (imports nothing eagerly)."""

__all__: list[str] = []
