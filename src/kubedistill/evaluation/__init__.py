"""Scoring frozen features: extraction (no augmentation), a linear probe and a weighted kNN classifier.

``extract_features`` turns any module and a list of image URIs into L2-normalized feature rows;
``evaluate_features`` scores train/val features without looking at the model; ``run_probe`` is the
``kubedistill probe`` step (an exported student, labeled train/val data, files written to ``out``).
"""
