"""Stage 2, tokens: tokenizing pairs as TRL's DPOTrainer does (`tokenization`), the Levenshtein token diff
(`diff`) and the per-token masks built from it (`masks`, `stopwords`), edit-distance statistics (`stats`) and
precomputed reference log-probs (`ref_logps`).

Imports only `bmc_data.pairs` and the top-level `errors`."""
