"""SynPO operator: API models, the pure stage planner, executors (Kubernetes Jobs, local processes), CLI."""

__version__ = "0.1.0"
