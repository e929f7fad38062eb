"""Orchestration on top of the science: Ray Tune trials, Ray Data stages and MLflow tracking."""
