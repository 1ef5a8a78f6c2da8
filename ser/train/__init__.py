"""Layer 4, training: the one loop (loop), its objectives and SpecAugment (augment).

Imports the floor, ser.features and ser.models.
"""
