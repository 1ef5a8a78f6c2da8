"""ser: a reproducible speech-emotion-recognition research pipeline.

Layers, each importing only the ones above it in this list (tests/test_codegraph.py checks):

    floor      config, errors, fsutil, logutil, codegraph, runtime, stageutil, stats, runs
    data       corpora, manifests, label maps, splits, demo corpora, downloads
    features   audio front end, feature stores (log-mel, waveform, openSMILE), datasets
    models     CRNN, encoders (+ cached embeddings), linear learners, checkpoints
    train      the one training loop and its objectives
    eval       per-run evaluation, the summary over runs, `ser report`
    fanout     pending stages as jobs on SLURM (submitit) or local processes, recorded in dvc.lock
    infer      `ser predict` and the `ser` command line
"""
__version__ = "0.1.0"
