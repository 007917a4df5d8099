"""The core: variants, the cell and its recurrence backends, training, config types and result schemas.

The bottom layer: it imports nothing from the CLI, runners, reports or tasks, and never Ray.
It knows the task protocol (duck-typed), not the tasks.
"""
