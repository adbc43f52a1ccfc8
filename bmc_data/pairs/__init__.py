"""Stage 1, pairs in: the typed pair record and column names (`schema`), reading every input layout into
pairs (`loading`), and final-answer extraction and comparison for QA/math (`answers`).

Imports nothing else from bmc_data but `errors`."""
