"""Stage 1, pairs in: the typed pair record and column names (`schema`), reading every input layout into
pairs (`loading`), final-answer extraction and comparison for QA/math (`answers`), the count and task rules
every entry point checks (`options`), and a reviewer's decisions applied to a dataset (`review`, shared by
publish and bmc_train).

Imports nothing else from bmc_data but `errors`."""
