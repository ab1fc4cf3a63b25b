"""Executors carry out the planner's decisions: `jobs` (Kubernetes Jobs) and `local` (subprocesses)."""
