"""Stage 5, command-line plumbing shared by `python -m bmc_data` and `python -m bmc_data.publish`: provider and
logging options (`args`) and the batch-ledger subcommand (`batches`). The one-line error wrapper every CLI runs
under is `bmc_data.runner`, below every stage so that any command (the review page's, bmc_train's) can use it."""
