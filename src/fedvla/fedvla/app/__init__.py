"""Application assembly: builds running parts (the policy runtime, federation servers and
clients) from config files and checkpoints. Above every core package, below the CLI and nodes."""
