"""Prompt templates (``templates/``) and the experimental conditions they are built for."""
