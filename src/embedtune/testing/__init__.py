"""Hooks that tests arm: fault injection (faults.py). The product never imports this package; it calls only
embedtune.hooks.hook, which does nothing until code here arms it (embedtune/hooks.py says why the layers sit so).

Layer: with training, evaluation and export (tests/test_architecture.py). The fault callback reaches the trainer
through training/callbacks.py, so this package sits above it; nothing in the product imports it back, except the
package's own __init__ when EMBEDTUNE_FAULT asks for it.
"""
