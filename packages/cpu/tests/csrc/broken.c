/* Test fixture: a source that does not compile (an undeclared symbol), for
   test_native.py's build-error test. Never part of a library. */
int f(void) { return missing_symbol; }
