"""Reproducible experiments built on bmc_data and bmc_train (not part of the installed package)."""
