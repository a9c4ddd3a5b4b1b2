"""firmware_bridge: the bench side of boostsim (serial protocol, host driver, firmware, emulator)."""
