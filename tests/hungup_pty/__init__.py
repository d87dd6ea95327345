"""A pyserial URL handler for tests: hungup:// is a real pty whose other end closes while pyserial opens it."""
