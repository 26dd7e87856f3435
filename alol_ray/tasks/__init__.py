"""Tasks that ship with alol-ray (data built by code, with their own human-designed reward)."""
