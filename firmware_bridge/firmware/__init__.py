"""MicroPython sources of the bench board firmware (flashed flat onto the Pico).

On the host they form this package so the protocol pieces have one definition:
``from firmware_bridge.firmware import scpi, commands, acq, config, device``. ``main.py`` and
``hal.py`` import ``machine`` and only run on the board. This ``__init__`` is not flashed.
"""
