"""Stage 3, the Bridging Phase: prompt templates (`templates`), parsing the editor's reply (`parsing`,
`edits`, and `protocol`: the structured reply's per-pair schema), running many calls at once (`concurrency`),
sampling y_l for QA/math (`sampling`) and the orchestration that turns pairs into bridged rows (`bridge`).

Imports `bmc_data.pairs`, `bmc_data.tokens` and `bmc_data.providers`; never the stages above it."""
