"""Layer 5, evaluation: test-set metrics per run (evaluate), the summary over runs
(summary) and `ser report` (report). Imports the floor, ser.features and ser.models;
never ser.train.
"""
