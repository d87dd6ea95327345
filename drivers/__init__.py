"""The outside world's devices: P1 readers, telegram decoding, the meter emulator."""
