"""The bottom layer, used by every other: errors, argument checks, progress, threads, device, data, metrics.

Nothing here imports from the rest of the package.
"""
