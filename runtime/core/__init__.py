"""The bottom layer: settings, errors, models, retries, references, metrics, tracing, trigger
declarations, group commits and rebuild loops. Imports nothing of ours."""
