"""The hivla runtime: control loop, coaching console, scripted runs and coach, CLI, environments."""

__version__ = "0.1.0"
