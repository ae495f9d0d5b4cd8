"""The PyTorch side: the factorized embedding as a module, training and fine-tuning before export.

Above `pipeline` (fine-tuning ends in a compressed export).
"""
