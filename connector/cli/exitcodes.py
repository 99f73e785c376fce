"""Exit codes shared by every command, so scripts and systemd can tell failures apart."""

OK = 0
FAILURE = 1  # the operation ran and failed (e.g. some files could not be processed)
USAGE = 2  # bad command line or bad configuration: nothing was done
UNAVAILABLE = 3  # a peer (PACS, registry) or the daemon could not be reached
