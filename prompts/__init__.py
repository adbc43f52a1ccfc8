"""Versioned prompt templates for targeted modification (data files; loaded by bmc_data.bridging.templates)."""
