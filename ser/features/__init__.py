"""Layer 2, features: audio front end and the stores every later stage reads.

audio (decode, check, condition), precompute (log-mel / waveform / openSMILE stores),
smile (openSMILE), stores (the memory-mapped store format), dataset (datasets and
loaders over a store). Imports the floor and ser.data only.
"""
