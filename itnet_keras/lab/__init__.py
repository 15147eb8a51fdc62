"""Tools beside the model: benchmarks, the study runners the notebooks call, and the
notebook runner. Nothing in the model's package imports them.

- `bench`: training throughput and memory, loop against unrolled (`python -m itnet_keras.lab.bench`).
- `bench_input`: input pipeline throughput (`python -m itnet_keras.lab.bench_input`).
- `modes`, `studies`: a study's budget (smoke or full), its runs and summaries.
- `search`: the architecture search (the widest network under a budget, the selection rule).
- `figures`: the studies' plots.
- `notebooks`: runs `notebooks/*.py` into their `.ipynb` (`python -m itnet_keras.lab.notebooks`).
"""
