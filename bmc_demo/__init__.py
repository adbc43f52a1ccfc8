"""`make demo` / `python -m bmc_demo`: the whole BMC pipeline on the embedded SmolLM2-135M, offline, on a CPU.

It sits above both halves of the library (it uses `bmc_data` to build the data and `bmc_train` to train on it),
which is why it is its own package: neither of those may import the other's upper layers.
"""
