"""Stage 1, pairs in: the typed pair record and column names (`schema`), reading every input layout into
pairs (`loading`), final-answer extraction and comparison for QA/math (`answers`), and the count and task rules
every entry point checks (`options`).

Imports nothing else from bmc_data but `errors`."""
