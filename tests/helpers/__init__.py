"""What the tests share, each part defined once. Test modules import from here (and use conftest.py's fixtures);
no test module imports another (tests/test_layout.py checks it)."""
