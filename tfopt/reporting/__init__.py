"""Reporting: the run's progress as it goes, seconds and memory per stage, report.json and
report.html, and the output directory published whole or not at all."""
