"""firmware_bridge: the bench side of boostsim.

Serial protocol, host driver, board firmware and board emulator.
"""
