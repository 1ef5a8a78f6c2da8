"""Layer 6, fan-out: the pending stages of the DVC pipeline as jobs on a cluster engine (SLURM through
submitit, or local processes), recorded in dvc.lock as `dvc repro` would record them. Imports only the
floor (ser.errors); runs the stages through their own commands, never through ser's Python API.
"""
