"""Bus applications that tests run as real processor subprocesses."""
